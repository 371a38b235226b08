# Entry points: `make demo`, `make test`. Each creates .venv when missing.
# `make test` = lint + the default suite + each heavy tier in TIERS; a tier that cannot
# start here (not root, no packages, no VM) says why and passes as skipped.
# docs/testing.md: what each tier needs and how long it takes.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
PYTEST := $(VENV)/bin/python -m pytest
# Heavy tiers run by `make test` after the default suite (add a tier: one target, one word here).
TIERS  := test-parsl test-slurm test-vm
# Markers the default suite leaves to their tiers.
DEFAULT_MARKS := not slurm
# Tests run inside the VM (cgroup v2), as root and then as nobody in a delegated subtree.
VM_TESTS ?= tests/test_vm.py tests/test_measurement.py -m "vm and not slow"
# In the VM: each test's name as it starts (-v), so a run that hangs shows where; a test past
# 300 s fails with every thread's stack (pytest-timeout) instead of eating the run's time.
VM_PYTEST := -p no:cacheprovider -v -rs --timeout 300
VM_RUN := bash scripts/vm-run.sh --skip-ok --both --timeout 1800 --phase-timeout 840 --

.PHONY: test-vm-both demo test lint test-default test-vm-full $(TIERS) slurm slurm-down bench system-deps clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/loadmaster demo

system-deps:
	bash scripts/system-deps.sh

test: lint test-default $(TIERS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test-default: $(STAMP) system-deps
	$(PYTEST) -m "$(DEFAULT_MARKS)"

# A real Slurm (root): the tests' fixture runs `scripts/slurm.sh up` (installs and starts
# it when missing) and skips them with the script's reason when it cannot.
test-slurm: $(STAMP)
	$(PYTEST) -m slurm

slurm:
	bash scripts/slurm.sh up

slurm-down:
	bash scripts/slurm.sh down

# Boots a VM with cgroup v2 and runs VM_TESTS as root, then as nobody in a delegated subtree
# in the same boot (each bounded, ends with a `vm-guest: as root|nobody: exit N` line, says
# every minute what it runs); then, on the host, vm-run.sh's own tests. Says why and passes
# when the VM cannot start. `make test-vm-both` is the same (kept as a name).
test-vm: $(STAMP)
	$(VM_RUN) $(VENV)/bin/python -m pytest $(VM_PYTEST) $(VM_TESTS)
	$(PYTEST) -q -rs tests/test_vm_run.py

test-vm-both: test-vm

# Also the slow `vm` tests (cat, sort, xz of 200 MB files): longer than CI's budget; docs/testing.md.
test-vm-full: $(STAMP)
	$(VM_RUN) $(VENV)/bin/python -m pytest $(VM_PYTEST) tests/test_vm.py tests/test_measurement.py -m vm

# Parsl's own test suite against loadmaster.parsl.LoadmasterExecutor, sandbox off and on
# (a venv of its own, .parsl-venv: Parsl's conftest needs pytest < 8).
test-parsl: $(STAMP)
	bash scripts/parsl-suite.sh

bench: $(STAMP)
	bash bench/run-all.sh

clean:
	rm -rf $(VENV) .vm-venv out bench/results
