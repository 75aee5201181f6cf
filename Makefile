# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export DEBIAN_FRONTEND := noninteractive

.PHONY: setup venv stress-ng tuned chromium postgresql run test lint typecheck unit bench bench-quick bench-deps clean \
	install

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

# Chromium (Debian's package) only for the test that renders the HTML report into a screenshot:
# installed when we are root; otherwise, or when apt-get fails, a message, and that test skips.
chromium:
	@if command -v chromium >/dev/null 2>&1; then \
		echo "chromium: $$(chromium --version 2>/dev/null | head -n1)"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && apt-get install -y chromium || \
			echo "chromium could not be installed: the report rendering test will be skipped." >&2; \
	else \
		echo "chromium is not installed and this is not root: the report rendering test will be skipped" \
			"(to run it: 'sudo apt-get update && sudo apt-get install -y chromium')." >&2; \
	fi

# PostgreSQL (Debian's package) only for the fleet store's tests, which start a throwaway cluster of
# their own with its initdb/pg_ctl (tests/fleet/conftest.py): installed when we are root; otherwise, or
# when apt-get fails, a message, and those tests skip.
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then \
		echo "postgresql: $$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\n' ' ')"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && apt-get install -y postgresql || \
			echo "postgresql could not be installed: the fleet store tests will be skipped." >&2; \
	else \
		echo "postgresql is not installed and this is not root: the fleet store tests will be skipped" \
			"(to run them: 'sudo apt-get update && sudo apt-get install -y postgresql')." >&2; \
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
unit: setup tuned chromium postgresql
	$(PY) -m pytest -q -m "not e2e" --cov=kloros_orchestrator.runtime --cov-report=term \
		--cov-fail-under=$(RUNTIME_COVERAGE)
	$(PY) -m pytest -q -m e2e

test: setup lint typecheck unit

# Benchmarks (bench/README.md): Optuna and Nevergrad come from the `bench` extra only; the fleet scaling
# benchmark starts a throwaway PostgreSQL of its own (Debian's package, as for the fleet tests).
bench-deps: venv
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'

bench: setup bench-deps postgresql
	$(PY) bench/run_all.py

bench-quick: setup bench-deps postgresql
	$(PY) bench/run_all.py --quick

# `sudo make install`: the package in a venv of its own ($(PREFIX)/venv, the console script
# $(PREFIX)/venv/bin/kloros-orchestrator, linked from $(BINDIR)), the unit in $(UNITDIR) with ExecStart on
# that script, and deploy/dream.yaml as $(SYSCONFDIR)/dream.yaml unless one is there (an operator's
# config is never overwritten). `make install DESTDIR=<dir>` stages all of it below <dir> (as anyone)
# and leaves systemd alone; a venv is not relocatable, so a staged one runs from <dir> only.
PREFIX ?= /opt/kloros-orchestrator
SYSCONFDIR ?= /etc/kloros-orchestrator
UNITDIR ?= /etc/systemd/system
BINDIR ?= /usr/local/bin
DESTDIR ?=
UNIT := kloros-orchestrator.service

install:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then \
		echo "make install writes $(PREFIX), $(SYSCONFDIR) and $(UNITDIR): run it as root" \
			"(or stage it with DESTDIR=<dir>)." >&2; \
		exit 1; \
	fi
	@if [ -z "$(DESTDIR)" ]; then $(MAKE) --no-print-directory stress-ng; fi
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)/venv
	$(DESTDIR)$(PREFIX)/venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade .
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR)
	ln -sfn $(PREFIX)/venv/bin/kloros-orchestrator $(DESTDIR)$(BINDIR)/kloros-orchestrator
	sed -e 's|/opt/kloros-orchestrator|$(PREFIX)|g' -e 's|/etc/kloros-orchestrator|$(SYSCONFDIR)|g' \
		deploy/$(UNIT) > $(DESTDIR)$(UNITDIR)/$(UNIT)
	chmod 0644 $(DESTDIR)$(UNITDIR)/$(UNIT)
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/dream.yaml ]; then \
		echo "kept the existing $(SYSCONFDIR)/dream.yaml (the new example: deploy/dream.yaml)"; \
	else \
		install -D -m 0644 deploy/dream.yaml $(DESTDIR)$(SYSCONFDIR)/dream.yaml && \
		echo "installed $(SYSCONFDIR)/dream.yaml"; \
	fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "next:"
	@echo "  $(PREFIX)/venv/bin/kloros-orchestrator validate --config $(SYSCONFDIR)/dream.yaml"
	@echo "  systemctl enable --now kloros-orchestrator"
	@echo "  kloros-orchestrator status"
	@echo "  journalctl -u kloros-orchestrator -p warning"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
