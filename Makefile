# Two commands on a fresh machine:  `make mini` (install + embedded mini benchmark) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install mini test lint clean-mini

install: $(VENV)/.installed

# torch and torchvision first, pinned to the builds on this machine's disk (never a multi-GB download)
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $@

mini: install
	HF_HUB_OFFLINE=1 $(BIN)/snakemake --workflow-profile profiles/mini
	$(BIN)/moe-adapters show results/mini/mini_order1_table.csv

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks

clean-mini:
	rm -rf results/mini
