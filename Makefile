# Two commands for a newcomer: `make demo` and `make test` (each creates .venv when needed).
#
#   make demo        build the example app and show its whole cycle (scripts/demo.sh)
#   make test        the whole test suite: on every CPython >= 3.11 found (PYTHONS), then AGAIN
#                    as the unprivileged user nobody on the system Python
#   make lint        ruff check + mypy (strict on reexec_core)
#   make bench       every bench/bench_*.py, side by side numbers and ratios
#   make build       ./build.sh: the example app -> examples/nsapp/dist/nsapp-VERSION.pyz
#   make conformance the public TUF conformance suite against python -m selfupdate.conformance
#
# Variables: PYTHON3 (interpreter that creates .venv), PYTHONS (interpreters for the root pass;
# default: one per CPython version >= 3.11 found, see scripts/pythons.sh), PYTEST_ARGS,
# UNPRIV_PYTHON (a Python the unprivileged user can run: outside /root), UNPRIV_UID.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON3 ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
UNPRIV_PYTHON ?= /usr/bin/python3
UNPRIV_UID ?= 65534
PYTHONS ?= $(shell scripts/pythons.sh $(PYTHON3))
# Tools some tests need, as command:debian-package. As root with apt-get, `make test` installs
# the missing ones (newuidmap drives the subordinate-id path; bwrap is the reference tool).
SYSTEM_TOOLS := newuidmap:uidmap newgidmap:uidmap bwrap:bubblewrap setpriv:util-linux \
	nginx:nginx systemd-socket-activate:systemd

.PHONY: help venv demo test test-here test-python system-deps test-unprivileged lint bench build conformance clean

help:
	@sed -n '1,13p' Makefile | sed 's/^# \{0,1\}//'

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml examples/nsapp/pyproject.toml
	@if ! [ -x $(VENV_PY) ]; then $(PYTHON3) -m venv $(VENV); fi
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' -e examples/nsapp
	@touch $@

demo: $(VENV_STAMP)
	PYTHON=$(CURDIR)/$(VENV_PY) bash scripts/demo.sh

# Every pass runs even if an earlier one fails (CI shows everything); any failing fails.
# The root pass runs with .venv, then once more for each other CPython version in PYTHONS.
test: $(VENV_STAMP) system-deps
	@status=0; $(MAKE) --no-print-directory test-here || status=1; \
	here="$$($(VENV_PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; \
	for py in $(PYTHONS); do \
		ver="$$("$$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" || { status=1; continue; }; \
		[ "$$ver" = "$$here" ] && continue; \
		$(MAKE) --no-print-directory test-python PY="$$py" || status=1; \
	done; \
	if [ "$$(id -u)" = 0 ]; then \
		$(MAKE) --no-print-directory test-unprivileged || status=1; \
	else \
		echo "make test: not root, so the suite ran as $$(id -un) only"; \
	fi; \
	[ $$status = 0 ] && echo "make test: all passes succeeded" || echo "make test: FAILED (see above)" >&2; \
	exit $$status

test-here: $(VENV_STAMP)
	@echo "== root pass on $$($(VENV_PY) -V 2>&1) (.venv)"
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

# The root pass on another interpreter PY, in its own .venv-X.Y.
test-python:
	@test -n "$(PY)" || { echo "test-python: set PY=/path/to/python3.X" >&2; exit 2; }
	@ver="$$("$(PY)" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; v=".venv-$$ver"; \
	if ! [ -x "$$v/bin/python" ]; then "$(PY)" -m venv "$$v"; fi; \
	if ! [ -f "$$v/.installed" ] || [ pyproject.toml -nt "$$v/.installed" ] || \
			[ examples/nsapp/pyproject.toml -nt "$$v/.installed" ]; then \
		"$$v/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]' -e examples/nsapp && \
			touch "$$v/.installed"; \
	fi; \
	echo "== root pass on $$("$$v/bin/python" -V 2>&1) ($$v)"; \
	"$$v/bin/python" -m pytest $(PYTEST_ARGS)

# As root with apt-get: install the packages of SYSTEM_TOOLS whose command is missing, so
# their tests run instead of skipping. Anything else: say what is missing and go on.
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do \
		command -v "$${t%%:*}" >/dev/null 2>&1 || missing="$$missing $${t#*:}"; \
	done; \
	missing="$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' ')"; \
	if [ -z "$${missing// /}" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "== installing $$missing(tests need them)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
			echo "make: installing $$missing failed; the tests that need them will skip" >&2; \
	else \
		echo "make: $$missing not installed (install them as root); the tests that need them will skip" >&2; \
	fi

# The suite again as an unprivileged user. The interpreter of .venv may live under /root
# (mode 0700), which nobody cannot read: `setpriv -- /root/.../python` then only *appears* to
# work (it silently loads another Python's standard library). So: a world-readable copy of
# the repository, a venv made from $(UNPRIV_PYTHON) and installed as root, then pytest run as
# uid $(UNPRIV_UID) with HOME and TMPDIR in a directory that user owns. The first step proves
# which user and which standard library the tests really get.
test-unprivileged:
	@test "$$(id -u)" = 0 || { echo "test-unprivileged: must be run as root" >&2; exit 1; }
	@command -v setpriv >/dev/null || { echo "test-unprivileged: setpriv (util-linux) is missing" >&2; exit 1; }
	@base="$$(mktemp -d /tmp/nsapp-unpriv.XXXXXX)"; \
	trap 'rm -rf "$$base"' EXIT; \
	chmod 755 "$$base"; mkdir -p "$$base/repo" "$$base/home" "$$base/tmp"; \
	echo "== unprivileged pass: copy of the repository in $$base/repo"; \
	tar -C "$(CURDIR)" --exclude=./.git --exclude='./.venv*' --exclude=./dist \
		--exclude='__pycache__' --exclude=.pytest_cache --exclude=.mypy_cache \
		--exclude=.ruff_cache --exclude='*.egg-info' -cf - . | tar -C "$$base/repo" -xf -; \
	echo "== venv from $(UNPRIV_PYTHON) ($$($(UNPRIV_PYTHON) -V 2>&1)), installed as root"; \
	$(UNPRIV_PYTHON) -m venv "$$base/venv"; \
	"$$base/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
		-e "$$base/repo[dev]" -e "$$base/repo/examples/nsapp"; \
	echo "== filling the build cache as root (the unprivileged user only reads it)"; \
	PYTHON="$$base/venv/bin/python" "$$base/repo/build.sh" --out "$$base/warmup.pyz" | tail -n 1; \
	rm -f "$$base/warmup.pyz"; \
	chmod -R a+rX "$$base/repo" "$$base/venv"; \
	chown -R $(UNPRIV_UID):$(UNPRIV_UID) "$$base/home" "$$base/tmp"; \
	as_user() { \
		setpriv --reuid=$(UNPRIV_UID) --regid=$(UNPRIV_UID) --clear-groups -- \
		env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$$base/home" TMPDIR="$$base/tmp" \
		LANG=C.UTF-8 CI="$${CI:-}" NSAPP_EXPECT_UID=$(UNPRIV_UID) \
		NSAPP_EXPECT_STDLIB="$$stdlib" "$$@"; \
	}; \
	stdlib="$$($(UNPRIV_PYTHON) -c 'import os; print(os.path.dirname(os.__file__))')"; \
	seen="$$(cd "$$base/repo" && as_user "$$base/venv/bin/python" -c \
		'import os, sys; print(os.getuid(), os.path.dirname(os.__file__), sys.prefix)')"; \
	echo "== as nobody: uid, stdlib, prefix = $$seen"; \
	[ "$$seen" = "$(UNPRIV_UID) $$stdlib $$base/venv" ] || \
		{ echo "test-unprivileged: expected '$(UNPRIV_UID) $$stdlib $$base/venv'" >&2; exit 1; }; \
	echo "== pytest as uid $(UNPRIV_UID)"; \
	cd "$$base/repo" && as_user "$$base/venv/bin/python" -m pytest -p no:cacheprovider $(PYTEST_ARGS)

lint: $(VENV_STAMP)
	$(VENV_PY) -m ruff check .
	$(VENV_PY) -m mypy reexec_core selfupdate examples/nsapp/nsapp

bench: $(VENV_STAMP)
	@for b in bench/bench_*.py; do \
		echo "== $$b"; env -u PYTHONDONTWRITEBYTECODE $(VENV_PY) "$$b"; \
	done

build: $(VENV_STAMP)
	PYTHON=$(CURDIR)/$(VENV_PY) ./build.sh

# Opt-in, not part of `make test` or CI: the suite lives in its own git repository, which a
# clean CI machine cannot fetch. Needs the workplace runner and a snapshot of the suite.
TUFCONF ?= ../shared/tools/tuf-conformance.sh
conformance: $(VENV_STAMP)
	@d="$$(mktemp -d)"; trap 'rm -rf "$$d"' EXIT; \
	printf '#!/bin/sh\nPYTHONPATH=%s exec %s -m selfupdate.conformance "$$@"\n' \
		"$(CURDIR)" "$(abspath $(VENV_PY))" > "$$d/client"; \
	chmod +x "$$d/client"; cp selfupdate/conformance.xfails "$$d/client.xfails"; \
	$(TUFCONF) "$$d/client"

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache
