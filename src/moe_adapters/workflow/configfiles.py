"""Config files read by us before Snakemake reads them: Snakemake's own reader says only "Config file is not valid
JSON or YAML"; this one names the file, the line and the column."""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import ConfigError, read_yaml


def checked(path: str | Path) -> str:
    """`path`, once it reads as a YAML mapping (for the Snakefile's `configfile:`); else Snakemake's WorkflowError."""
    try:
        read_yaml(path)
    except ConfigError as e:
        from snakemake.exceptions import WorkflowError

        raise WorkflowError(str(e)) from None
    return str(path)


def checked_or_exit(path: str | Path) -> str:
    """`path`, for a profile's `configfile:` (a YTE expression, evaluated while Snakemake reads its command line,
    before it reads the file): on an error, print it and exit as Snakemake's own command-line errors do."""
    try:
        read_yaml(path)
    except ConfigError as e:
        print(f"snakemake: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    return str(path)
