"""Reporting: what a reader looks at, from a finished run: tables (CSV, Markdown, metrics.json), the cost table,
figures, the ablation table and the reproduction ledger. steps: the workflow's reporting steps."""
