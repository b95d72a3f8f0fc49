"""Workflow glue: what the Snakefile asks of the package (plan: run names, variants, step specs and the paths of
shared steps) and the DVC helper (dvcpull)."""
