# Two entry points: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: demo test test-parsl lint bench system-deps clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/loadmaster demo

system-deps:
	bash scripts/system-deps.sh

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest
	$(MAKE) test-parsl

# Parsl's own test suite against loadmaster.parsl.LoadmasterExecutor, sandbox off and on
# (a venv of its own, .parsl-venv: Parsl's conftest needs pytest < 8).
test-parsl:
	bash scripts/parsl-suite.sh

bench: $(STAMP)
	bash bench/run-all.sh

clean:
	rm -rf $(VENV) out bench/results
