#!/usr/bin/env bash
# The whole self-update cycle of the example app, on this machine, in under a minute:
#
#   fresh keys + a signed release repository (selfupdate CLI), served on 127.0.0.1;
#   nsapp 1.0.0 installed and used; 2.0.0 published; `nsapp update` verifies, tries, migrates
#   the state, switches atomically and continues in the new build with the SAME PID;
#   then a tampered release and a release whose migration fails are both refused, and the
#   installed program and its state stay exactly as they were; then `nsapp rollback`;
#   finally `nsapp serve --listen` updated by SIGHUP while clients keep sending requests.
#
# Usage: PYTHON=.venv/bin/python scripts/demo.sh   (what `make demo` runs)
# Everything lives in a temporary directory that is removed at the end (also on Ctrl-C).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/nsapp-demo.XXXXXX")"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if [ -t 1 ]; then B=$'\e[1m'; G=$'\e[32m'; R=$'\e[31m'; N=$'\e[0m'; else B=""; G=""; R=""; N=""; fi
step() { printf '\n%s== %s%s\n' "$B" "$*" "$N"; }
say() { printf '   %s\n' "$*"; }
show() { printf '%s$ %s%s\n' "$B" "$*" "$N"; "$@"; }

export SHIV_ROOT="$WORK/shiv"              # where the .pyz unpacks its dependencies
export NSAPP_STATE_DIR="$WORK/state"       # the app's state (a history file)
KEYS="$WORK/keys" REPO="$WORK/repo" OPT="$WORK/opt" APP="$WORK/opt/nsapp.pyz"
mkdir -p "$OPT" "$WORK/build"
nsapp() { "$PY" "$APP" "$@"; }
pyz_sha() { sha256sum "$APP" | cut -c1-16; }
START=$SECONDS

step "1. Fresh signing keys and an empty signed release repository (TUF metadata)"
show "$PY" -m selfupdate init --keys "$KEYS" --repo "$REPO" --app nsapp >/dev/null
say "keys:       $KEYS (mode 0700, never served)"
say "repository: $REPO ($(ls "$REPO/metadata" | tr '\n' ' '))"

step "2. Serve the repository as plain static files on 127.0.0.1"
"$PY" -u -m http.server --bind 127.0.0.1 --directory "$REPO" 0 >"$WORK/http.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
    PORT="$(sed -n 's/.* port \([0-9]*\).*/\1/p' "$WORK/http.log" | head -n 1)"
    [ -n "$PORT" ] && break
    sleep 0.05
done
URL="http://127.0.0.1:$PORT"
say "python -m http.server (pid $SERVER_PID) at $URL"

step "3. Build nsapp 1.0.0 and 2.0.0 (the trusted root and the URL are baked into each build)"
ROOTJSON="$REPO/metadata/root.json"
[ -f "$ROOTJSON" ] || ROOTJSON="$REPO/metadata/1.root.json"
build() {
    PYTHON="$PY" "$ROOT/build.sh" --version "$1" --out "$WORK/build/$1/nsapp.pyz" \
        --trusted-root "$ROOTJSON" --repo-url "$URL" 2>/dev/null | tail -n 1
}
V1="$(build 1.0.0)"; say "built $V1"
V2="$(build 2.0.0)"; say "built $V2"
V21="$(build 2.1.0)"

step "4. Install 1.0.0 and use it: one file that starts parts of itself again, runs commands in"
printf '   new namespaces, and keeps a little state (a plain-text history file)\n'
cp "$V1" "$APP"; chmod 755 "$APP"
show nsapp --version
show nsapp reexec-demo
# Rootless namespaces: PID 1 inside, root mapped onto the caller, a private hostname.
show nsapp run --hostname demo-box -- sh -c 'echo "inside: pid=$$ uid=$(id -u) hostname=$(hostname)"' \
    || say "(this kernel refused new namespaces: the sentence above says why and what to change)"
# The sandbox preset for untrusted code: no capabilities, no_new_privs, Landlock, seccomp.
show nsapp run --sandbox strict -- sh -c \
    'grep -E "^(CapEff|NoNewPrivs)" /proc/self/status; unshare -U true 2>/dev/null || echo "unshare: refused (seccomp)"' \
    || say "(this kernel refused the sandbox: the sentence above says why)"
nsapp history --add "installed 1.0.0" >/dev/null
show nsapp history --add "used 1.0.0"
show cat "$NSAPP_STATE_DIR/history.txt"

step "5. Publish 2.0.0 (signed), and ask the installed 1.0.0 about it"
"$PY" -m selfupdate publish --keys "$KEYS" --repo "$REPO" "$V1" >/dev/null
show "$PY" -m selfupdate publish --keys "$KEYS" --repo "$REPO" "$V2"
say "(publish read the version, the app and the trusted root from the build itself, and made"
say " a delta from 1.0.0, published before: the update below downloads only that)"
show nsapp update --check || [ $? -eq 100 ]  # 100: an update is available

step "6. nsapp update: download + verify, try 2.0.0 (migration, health check), switch, continue"
printf '%s$ nsapp update &%s\n' "$B" "$N"
"$PY" "$APP" update &
UPD=$!
say "(the shell started 'nsapp update' as PID $UPD; watch the pid in its last lines)"
wait "$UPD"
show nsapp --version
say "the state was migrated by 2.0.0 itself, in its trial run, before it was installed:"
show ls "$NSAPP_STATE_DIR"
say "(tuf-cache is the verified release metadata, a cache: not part of the state snapshots)"
show cat "$NSAPP_STATE_DIR/history.jsonl"
SHA_V2="$(pyz_sha)"; STATE_V2="$(cat "$NSAPP_STATE_DIR/history.jsonl")"

step "7. A tampered release: 2.1.0 is published, then one byte of it is changed on the server"
show "$PY" -m selfupdate publish --keys "$KEYS" --repo "$REPO" --deltas 0 "$V21" >/dev/null
TARGET="$(find "$REPO/targets" -type f -name '*.pyz' -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-)"
"$PY" - "$TARGET" <<'PYEOF'
import sys
p = sys.argv[1]
data = bytearray(open(p, "rb").read())
data[len(data) // 2] ^= 0xFF
open(p, "wb").write(bytes(data))
PYEOF
say "flipped one byte of $(basename "$TARGET")"
printf '%s$ nsapp update%s\n' "$B" "$N"
if nsapp update; then printf '%sUNEXPECTED: the tampered build was accepted%s\n' "$R" "$N"; exit 1; fi
say "${G}refused${N}: still $(nsapp --version), file sha256 $(pyz_sha) (was $SHA_V2)"

step "8. A release whose migration fails: 3.0.0+failmigration (its migration raises halfway)"
V3="$(build 3.0.0+failmigration)"; say "built $V3"
show "$PY" -m selfupdate publish --keys "$KEYS" --repo "$REPO" "$V3" >/dev/null
printf '%s$ nsapp update%s\n' "$B" "$N"
if nsapp update; then printf '%sUNEXPECTED: the failing build was installed%s\n' "$R" "$N"; exit 1; fi
say "${G}refused${N}: still $(nsapp --version), file sha256 $(pyz_sha) (was $SHA_V2)"
if [ "$(cat "$NSAPP_STATE_DIR/history.jsonl")" = "$STATE_V2" ] && [ "$(ls "$NSAPP_STATE_DIR" | grep -v tuf-cache)" = "history.jsonl" ]; then
    say "${G}state restored${N}: history.jsonl is byte for byte what 2.0.0 had"
else
    printf '%sUNEXPECTED: the state changed%s\n' "$R" "$N"; exit 1
fi
say "the new build's own log says why:"
grep -E '^(FAILED|migration|post-update)' "$OPT/.nsapp.pyz.post-update.log" | sed 's/^/     /'
show nsapp update --check || [ $? -eq 100 ]  # 100: an update is available

step "9. nsapp rollback: 1.0.0 back in place, with the state it had"
show nsapp rollback
show nsapp history

step "10. A service updated under load: nsapp serve --listen, 3.1.0 published, SIGHUP"
V31="$(build 3.1.0)"
SPORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
printf '%s$ nsapp serve --listen 127.0.0.1:%s &%s\n' "$B" "$SPORT" "$N"
"$PY" "$APP" serve --listen "127.0.0.1:$SPORT" 2>"$WORK/serve.log" &
SVC=$!
# Four clients (two on a new connection per request, two on keep-alive ones) for the whole
# step; each request's answer says which build and which PID answered it.
"$PY" - "$SPORT" 3.1.0 >"$WORK/load.out" <<'PYEOF' &
import http.client, json, sys, threading, time
port, target = int(sys.argv[1]), sys.argv[2]
done, lock, seen, errors = threading.Event(), threading.Lock(), {}, []
def client(keep):
    conn = None
    while not done.is_set():
        reused, conn = conn is not None, conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", "/"); r = conn.getresponse(); doc = json.loads(r.read())
        except (ConnectionRefusedError, OSError, http.client.HTTPException) as e:
            conn.close(); conn = None
            if not (reused and isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError))):
                errors.append(repr(e))  # a keep-alive connection closed while idle is sent again
            continue
        with lock:
            seen[(doc["version"], doc["pid"])] = seen.get((doc["version"], doc["pid"]), 0) + 1
        if not keep or r.getheader("Connection") == "close":
            conn.close(); conn = None
for _ in range(60):
    try: c = http.client.HTTPConnection("127.0.0.1", port, timeout=5); c.request("GET", "/healthz"); c.getresponse().read(); c.close(); break
    except OSError: time.sleep(0.1)
threads = [threading.Thread(target=client, args=(k,)) for k in (False, False, True, True)]
for t in threads: t.start()
end = time.monotonic() + 60
while time.monotonic() < end and not any(v == target for v, _ in seen): time.sleep(0.05)
time.sleep(0.5); done.set()
for t in threads: t.join()
for (v, pid), n in sorted(seen.items()): print(f"   {n:6d} answers from nsapp {v} (pid {pid})")
print(f"   {sum(seen.values())} requests, {len(errors)} errors {errors[:3]}")
PYEOF
LOAD=$!
sleep 1.5
show "$PY" -m selfupdate publish --keys "$KEYS" --repo "$REPO" "$V31" >/dev/null
show kill -HUP "$SVC"
wait "$LOAD"
cat "$WORK/load.out"
grep -v '^$' "$WORK/serve.log" | sed 's/^/   /'
kill -TERM "$SVC"; wait "$SVC" && say "SIGTERM: drained, exit status 0"

step "Done in $((SECONDS - START)) s; removing $WORK"
