#!/usr/bin/env bash
# Build the example app as one reproducible shiv .pyz.
#
#   ./build.sh [--version V] [--out PATH] [--trusted-root FILE] [--repo-url URL]
#
# The runtime dependencies (pyproject.toml [project].dependencies) are pip-installed once into a
# cache directory keyed by a hash of the requirement list and the interpreter, then reused with
# shiv --site-packages; the app's own packages are copied into a staging directory (with
# nsapp/_version.py rewritten and nsapp/_release/ written when asked). shiv itself, pip and
# setuptools never enter the archive. Two builds of the same source and version are
# byte-identical (shiv --reproducible, sorted files, fixed modes). Prints the .pyz path last.
#
# Environment: PYTHON (default: .venv/bin/python of this checkout; it must have shiv),
# NSAPP_BUILD_CACHE (default: build/cache in this checkout), SOURCE_DATE_EPOCH (shiv's default
# fixed timestamp otherwise).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION=""
OUT="$ROOT/dist/nsapp.pyz"
TRUSTED_ROOT=""
REPO_URL=""

usage() {
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
# One plain line instead of bash's "./build.sh: line N: 2: ..." for a flag without a value.
need() {
    if [ "$2" -lt 2 ]; then
        echo "build.sh: $1 needs a value" >&2
        usage
    fi
}
while [ $# -gt 0 ]; do
    case "$1" in
        --version) need "$1" $#; VERSION="$2"; shift 2 ;;
        --out) need "$1" $#; OUT="$2"; shift 2 ;;
        --trusted-root) need "$1" $#; TRUSTED_ROOT="$2"; shift 2 ;;
        --repo-url) need "$1" $#; REPO_URL="$2"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "build.sh: unknown argument: $1" >&2; usage ;;
    esac
done

PY="${PYTHON:-$ROOT/.venv/bin/python}"
if ! [ -x "$PY" ] && ! command -v "$PY" >/dev/null 2>&1; then
    echo "build.sh: no Python at $PY: run 'make venv' first, or set PYTHON" >&2
    exit 1
fi
if ! "$PY" -c 'import shiv' 2>/dev/null; then
    echo "build.sh: shiv is not installed for $PY: run 'make venv' (pip install -e '.[dev]')" >&2
    exit 1
fi
if [ -n "$TRUSTED_ROOT" ] && ! [ -f "$TRUSTED_ROOT" ]; then
    echo "build.sh: --trusted-root $TRUSTED_ROOT: no such file" >&2
    exit 1
fi
# Catch a wrong file (a targets.json, a key) at build time: a build with it could never verify
# an update. Only the shape is checked here; the client verifies the signatures.
if [ -n "$TRUSTED_ROOT" ] && ! "$PY" -I - "$TRUSTED_ROOT" <<'PYEOF'
import json, sys
try:
    with open(sys.argv[1], "rb") as f:
        ok = json.load(f)["signed"]["_type"] == "root"
except (OSError, ValueError, KeyError, TypeError):
    ok = False
sys.exit(0 if ok else 1)
PYEOF
then
    echo "build.sh: --trusted-root $TRUSTED_ROOT is not TUF root metadata: pass the" \
        "repository's metadata/root.json (selfupdate init prints its path)" >&2
    exit 1
fi
if [ -z "$VERSION" ]; then
    VERSION="$("$PY" -I -c 'import sys; sys.path.insert(0, sys.argv[1]); from nsapp._version import VERSION; print(VERSION)' "$ROOT")"
fi
case "$VERSION" in
    *[!A-Za-z0-9.+!_-]*|"")
        echo "build.sh: bad version '$VERSION': use a PEP 440 version such as 1.2.0" >&2
        exit 2 ;;
esac

# Files inside the archive keep their mode bits: fix them so the umask cannot change the bytes.
umask 022

# --- dependencies, installed once per requirement list and interpreter ------------------------
REQS="$("$PY" -I - "$ROOT/pyproject.toml" <<'PYEOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
print("\n".join(deps))
PYEOF
)"
KEY="$(printf '%s\n%s\n' "$REQS" "$("$PY" -I -c 'import sys, platform; print(sys.implementation.cache_tag, platform.machine())')" | sha256sum | cut -c1-16)"
CACHE="${NSAPP_BUILD_CACHE:-$ROOT/build/cache}"
DEPS="$CACHE/deps-$KEY"
if ! [ -f "$DEPS/.complete" ]; then
    echo "build.sh: installing dependencies into $DEPS (once)" >&2
    mkdir -p "$CACHE"
    TMPDEPS="$(mktemp -d "$CACHE/.deps-$KEY.XXXXXX")"
    trap 'rm -rf "$TMPDEPS"' EXIT
    printf '%s\n' "$REQS" > "$TMPDEPS/requirements.txt"
    # --no-compile: no .pyc in the cache (shiv skips them anyway; keeps the cache plain).
    "$PY" -m pip install --quiet --disable-pip-version-check --no-compile \
        --target "$TMPDEPS/site-packages" -r "$TMPDEPS/requirements.txt" >&2
    # Drop console-script wrappers of dependencies: they carry this machine's interpreter path.
    rm -rf "$TMPDEPS/site-packages/bin"
    chmod -R u=rwX,go=rX "$TMPDEPS"
    touch "$TMPDEPS/.complete"
    if ! mv -T "$TMPDEPS" "$DEPS" 2>/dev/null; then
        rm -rf "$TMPDEPS"   # another build won the race; its copy is as good
    fi
    trap - EXIT
fi

echo "build.sh: dependencies from $DEPS/site-packages" >&2

# --- staging copy of the app's own packages ---------------------------------------------------
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/nsapp-build.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
SRC="$STAGE/src"
mkdir -p "$SRC"
for pkg in reexec_core selfupdate nsapp; do
    if [ -d "$ROOT/$pkg" ]; then
        (cd "$ROOT" && find "$pkg" -name __pycache__ -prune -o -path "nsapp/_release" -prune \
            -o -type f ! -name '*.py[co]' -print0) |
            while IFS= read -r -d '' f; do
                mkdir -p "$SRC/$(dirname "$f")"
                cp "$ROOT/$f" "$SRC/$f"
            done
    fi
done
printf '"""The example app'"'"'s version; ./build.sh --version V rewrites this file in its staging copy."""\n\nVERSION = "%s"\n' "$VERSION" > "$SRC/nsapp/_version.py"
if [ -n "$TRUSTED_ROOT" ] || [ -n "$REPO_URL" ]; then
    mkdir -p "$SRC/nsapp/_release"
    [ -n "$TRUSTED_ROOT" ] && cp "$TRUSTED_ROOT" "$SRC/nsapp/_release/trusted_root.json"
    [ -n "$REPO_URL" ] && printf '%s\n' "$REPO_URL" > "$SRC/nsapp/_release/repo_url.txt"
fi
chmod -R u=rwX,go=rX "$SRC"

# --- the archive --------------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
OUT_ABS="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"
# Write beside the target, then rename: a running copy of the old file is never half-written.
"$PY" -m shiv --reproducible --compressed \
    --python "/usr/bin/env python3" \
    --entry-point nsapp.cli:main \
    --site-packages "$DEPS/site-packages" \
    --site-packages "$SRC" \
    --output-file "$STAGE/nsapp.pyz" >&2
mv -f "$STAGE/nsapp.pyz" "$OUT_ABS.tmp.$$"
mv -f "$OUT_ABS.tmp.$$" "$OUT_ABS"
echo "$OUT_ABS"
