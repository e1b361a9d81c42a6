#!/usr/bin/env bash
# The shell front door of `selfupdate build`, defaulting to the example app:
#
#   ./build.sh [PROJECT_DIR] [--entry-point MOD:FN] [--version V] [--out PATH]
#              [--trusted-root FILE] [--repo-url URL] [--channel NAME]
#
# PROJECT_DIR defaults to examples/nsapp; every flag is passed on as it is (see
# `selfupdate build --help`). Prints the .pyz path last; exit 2 for a build that cannot be made.
#
# Environment: PYTHON (default: .venv/bin/python of this checkout; it needs the framework
# installed, with its build extra), NSAPP_BUILD_CACHE (default: build/cache of this checkout;
# passed on as --cache), SOURCE_DATE_EPOCH (shiv's fixed timestamp otherwise).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if ! [ -x "$PY" ] && ! command -v "$PY" >/dev/null 2>&1; then
    echo "build.sh: no Python at $PY: run 'make venv' first, or set PYTHON" >&2
    exit 1
fi
project="$ROOT/examples/nsapp"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    project="$1"
    shift
fi
case " $* " in
    *" --cache "*) cache=() ;;
    *) cache=(--cache "${NSAPP_BUILD_CACHE:-$ROOT/build/cache}") ;;
esac
exec "$PY" -m selfupdate build "$project" "${cache[@]}" "$@"
