#!/usr/bin/env bash
# Print one interpreter per CPython minor version >= 3.11 found on this machine, the one that
# creates .venv ($1, default python3) first. Sources: $1, pyenv's versions, python3.1N on PATH.
# `make test` runs the suite's root pass on each; PYTHONS=... overrides this list.
set -uo pipefail
first="${1:-python3}"
candidates=("$first")
if command -v pyenv >/dev/null 2>&1; then
    root="$(pyenv root 2>/dev/null)"
    for py in "$root"/versions/3.*/bin/python3; do [ -x "$py" ] && candidates+=("$py"); done
fi
for n in 11 12 13 14 15; do
    py="$(command -v "python3.$n" 2>/dev/null)" && candidates+=("$py")
done
seen=" "
for py in "${candidates[@]}"; do
    # The real executable, not a pyenv shim (a shim costs ~50 ms and may pick another version).
    info="$("$py" -I -c 'import sys
if sys.implementation.name == "cpython" and sys.version_info >= (3, 11):
    print("%d.%d %s" % (sys.version_info[:2] + (sys.executable,)))' 2>/dev/null)" || continue
    [ -n "$info" ] || continue
    ver="${info%% *}"; exe="${info#* }"
    case "$seen" in *" $ver "*) continue ;; esac
    seen="$seen$ver "
    echo "$exe"
done
