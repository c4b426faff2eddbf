# CBCT QA monitor — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cbctqa-installed
DEMO_DIR ?= demo-output

.PHONY: venv lint typecheck test test-fast demo bench docs clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check qa_core xnat_plugin flows dashboard tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The run's output is also kept in test-artifacts/pytest.log; its failures are repeated last so
# that they are what the end of a CI log shows.
test: lint typecheck
	@mkdir -p test-artifacts
	@set -o pipefail; $(PY) -m pytest -q tests 2>&1 | tee test-artifacts/pytest.log; rc=$$?; \
	  if [ $$rc -ne 0 ]; then echo "== pytest exit $$rc; failures:"; \
	    grep -E '^(FAILED|ERROR) ' test-artifacts/pytest.log | tail -n 40; \
	    grep -E '(passed|failed|error|errors) in [0-9.]+s' test-artifacts/pytest.log | tail -n 1; fi; exit $$rc

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(VENV)/bin/cbctqa demo --out $(DEMO_DIR) --workers 2

# Regenerate the configuration reference from qa_core/settings.py (a test checks it is current).
docs: $(STAMP)
	$(VENV)/bin/cbctqa config --markdown > docs/configuration.md

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
