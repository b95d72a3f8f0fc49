# Two commands on a fresh machine:  `make mini` (install + embedded mini benchmark) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install mini test test-all lint clean-mini

install: $(VENV)/.installed

# torch and torchvision first, pinned to the builds on this machine's disk (never a multi-GB download)
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test,cluster]'
	touch $@

# = `dvc repro mini` (which runs the mini's Snakemake command and records its outputs in dvc.lock, so `dvc status`
# and `dvc pull` know them); the environment's tools first on PATH, for DVC's and Snakemake's jobs
mini: install
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 dvc repro mini
	$(BIN)/moe-adapters show results/mini/mini_order1_table.csv results/mini/cil_mini_4steps_table.csv

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" -n 2 --dist loadgroup

test-all: install  # slow tests too (torch.compile on a CPU); GPU tests run where CUDA is
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: install  # Python (ruff), the workflow's format (snakefmt) and Snakemake's own linter
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	@out="$$(HF_HUB_OFFLINE=1 $(BIN)/snakemake --lint 2>&1)"; echo "$$out"; echo "$$out" | grep -q "Congratulations"

clean-mini:
	rm -rf results/mini
