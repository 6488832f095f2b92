# Thin wrappers: each target creates .venv when missing. See README.md.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# uv (installed into the venv from the configured index, set up from pip's configuration); pip when it fails
INSTALLER ?= uv
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_ENABLE_TELEMETRY := false

.PHONY: setup demo test test-fast lint clean-data

$(BIN)/slidemil: pyproject.toml scripts/uv_install.py
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=/path/to/python3.11)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@if [ "$(INSTALLER)" = uv ] && $(BIN)/python scripts/uv_install.py $(VENV) -e ".[dev]"; then :; else \
		echo "installing with pip (INSTALLER=$(INSTALLER))"; $(BIN)/pip install --quiet -e ".[dev]"; fi
	touch $(BIN)/slidemil

# `dvc plots show` offline: the page template with vega inline (.dvc/config plots.html_template)
.dvc/tmp/plots_offline.html: $(BIN)/slidemil
	$(BIN)/python -m slidemil.evaluation.offline_plots

setup: $(BIN)/slidemil .dvc/tmp/plots_offline.html

demo: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/ruff check src pipelines tests benchmarks serving dashboard
	$(BIN)/pytest -q --timeout=1800

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check src pipelines tests benchmarks serving dashboard
