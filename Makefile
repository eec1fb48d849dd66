# `make test` and `make demo` work on a fresh machine: they create .venv, install the pinned
# environment (requirements/constraints.txt) and the package, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1

.PHONY: install test lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c requirements/constraints.txt torch torchvision
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[test,vit,metrics,bench]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check headsparse tests benchmarks
	TRITON_INTERPRET=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check headsparse tests benchmarks

demo: $(STAMP)
	$(VENV)/bin/headsparse demo --out demo_output

bench: $(STAMP)
	$(PY) benchmarks/attention.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
