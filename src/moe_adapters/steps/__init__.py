"""The steps of a run, each a function of (its typed spec, input paths, output path); the CLI and the workflow's
rules call these. specs: what each step reads; build: models from specs; record: cost and provenance."""
