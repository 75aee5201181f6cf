# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export DEBIAN_FRONTEND := noninteractive

.PHONY: setup venv stress-ng tuned run test lint typecheck unit bench bench-quick bench-deps clean

setup: venv stress-ng

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# stress-ng comes from Debian's packages: installed when we are root, otherwise a clear message.
stress-ng:
	@if command -v stress-ng >/dev/null 2>&1; then \
		echo "stress-ng: $$(stress-ng --version | head -n1)"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && apt-get install -y stress-ng; \
	else \
		echo "stress-ng is not installed and this is not root: run 'sudo apt-get update && sudo apt-get install -y stress-ng', then 'make $(MAKECMDGOALS)' again." >&2; \
		exit 3; \
	fi

# TuneD (Debian's package too) only for the tests that load exported profiles with TuneD's own loader:
# installed when we are root; otherwise, or when apt-get fails, a message, and those tests skip.
tuned:
	@if /usr/bin/python3 -c 'import tuned' >/dev/null 2>&1; then \
		echo "tuned: $$(/usr/bin/python3 -c 'import tuned.version as v; print(v.TUNED_VERSION_STR)')"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && apt-get install -y tuned || \
			echo "tuned could not be installed: the TuneD export tests will be skipped." >&2; \
	else \
		echo "tuned is not installed and this is not root: the TuneD export tests will be skipped (to run them: 'sudo apt-get update && sudo apt-get install -y tuned')." >&2; \
	fi

run: setup
	$(PY) -m kloros_orchestrator run

lint: venv
	$(PY) -m ruff check kloros_orchestrator tests bench

typecheck: venv
	$(PY) -m mypy

# Unit tests first, with the runtime's line coverage by unit tests alone (goal: >= 85 %), then the
# end-to-end tests (real daemon, real stress-ng, real signals).
RUNTIME_COVERAGE ?= 85
unit: setup tuned
	$(PY) -m pytest -q -m "not e2e" --cov=kloros_orchestrator.runtime --cov-report=term \
		--cov-fail-under=$(RUNTIME_COVERAGE)
	$(PY) -m pytest -q -m e2e

test: setup lint typecheck unit

# Benchmarks (bench/README.md): Optuna and Nevergrad come from the `bench` extra only.
bench-deps: venv
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'

bench: setup bench-deps
	$(PY) bench/run_all.py

bench-quick: setup bench-deps
	$(PY) bench/run_all.py --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
