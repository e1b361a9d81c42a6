"""nsapp's state: a small history file whose format changes between versions, and its migrations.

The state directory is ``$NSAPP_STATE_DIR`` if set, else ``platformdirs.user_state_dir("nsapp")``.
Each build keeps the history in the format of its version:

========  ===========================  ==========================================
version   file                         one line per event
========  ===========================  ==========================================
< 2       ``history.txt``              ``2026-11-29T08:00:00Z serve``
2.x       ``history.jsonl``            ``{"time": "...", "event": "serve"}``
>= 3      ``history.jsonl``            ``{"seq": 1, "time": "...", "event": "serve"}``
========  ===========================  ==========================================

Migrations ``2.0.0`` and ``3.0.0`` convert between them; the health check refuses a state that
is not in this build's format. The down-migration ``2.0.0`` undoes the first one (``history.jsonl``
back to ``history.txt``): run by a 2.x or later build on ``nsapp update --to 1.x``, it lets the
1.x build's health check accept the state.

Failing a migration on purpose (for the demo and the tests): a build whose version has the
local label ``failmigration`` (``./build.sh --version 3.0.0+failmigration``) does half of each
migration it runs and then raises, so its trial fails, the update is refused and the state is
restored; a down-migration does the same. ``NSAPP_FAIL_MIGRATION=1`` in the environment of
``nsapp update`` does the same for any build (the down-migration runs in ``nsapp update``
itself). A build with the label ``failhealth`` (``./build.sh --version 3.0.0+failhealth``) migrates
the state correctly and then fails its health check: the same refusal, after migrations that
passed.
"""

from __future__ import annotations

import os

from nsapp._version import VERSION

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

TEXT = "history.txt"
JSONL = "history.jsonl"


def state_dir() -> Path:
    """The app's state directory (not created)."""
    from pathlib import Path

    env = os.environ.get("NSAPP_STATE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_state_dir("nsapp"))


def format_of(version: str) -> int:
    """The history format a version writes: 1, 2 or 3 (by its major version)."""
    head = version.split(".", 1)[0]
    major = int(head) if head.isdigit() else 0
    return 1 if major < 2 else 2 if major < 3 else 3


def _labelled(version: str, label: str) -> bool:
    return label in version.partition("+")[2].split(".")


def failing_on_purpose(version: str = VERSION) -> bool:
    """True for a build made to fail its migrations (see the module docstring)."""
    return _labelled(version, "failmigration") or os.environ.get("NSAPP_FAIL_MIGRATION") == "1"


def failing_health_on_purpose(version: str = VERSION) -> bool:
    """True for a build made to fail its health check (see the module docstring)."""
    return _labelled(version, "failhealth")


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def record(event: str, directory: Path | None = None) -> None:
    """Append an event to the history, in this build's format."""
    import json

    d = directory or state_dir()
    d.mkdir(parents=True, exist_ok=True)
    fmt = format_of(VERSION)
    if fmt == 1:
        with open(d / TEXT, "a", encoding="utf-8") as f:
            f.write(f"{_now()} {event}\n")
        return
    entry: dict[str, object] = {"time": _now(), "event": event}
    if fmt == 3:
        entry = {"seq": len(read(d)) + 1, **entry}
    with open(d / JSONL, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def read(directory: Path | None = None) -> list[dict[str, object]]:
    """The history as a list of dicts (whatever format is on disk)."""
    import json

    d = directory or state_dir()
    out: list[dict[str, object]] = []
    if (d / JSONL).exists():
        for line in (d / JSONL).read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line))
    elif (d / TEXT).exists():
        for line in (d / TEXT).read_text(encoding="utf-8").splitlines():
            when, _, event = line.partition(" ")
            out.append({"time": when, "event": event})
    return out


def _fail_halfway(name: str) -> None:
    if failing_on_purpose():
        why = (f"build {VERSION} is marked failmigration" if _labelled(VERSION, "failmigration")
               else "NSAPP_FAIL_MIGRATION=1 is set")
        raise RuntimeError(f"migration {name} failed on purpose ({why})")


def migrate_to_2(directory: Path) -> str:
    """2.0.0: ``history.txt`` (plain lines) -> ``history.jsonl`` (JSON lines)."""
    import json

    src, dst = directory / TEXT, directory / JSONL
    if not src.exists():
        _fail_halfway("2.0.0")
        return "no history yet"
    lines = [ln for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()]
    with open(dst, "w", encoding="utf-8") as f:
        for i, line in enumerate(lines):
            when, _, event = line.partition(" ")
            f.write(json.dumps({"time": when, "event": event}) + "\n")
            if i == len(lines) // 2:
                f.flush()
                _fail_halfway("2.0.0")
    src.unlink()
    return f"history.txt ({len(lines)} lines) -> history.jsonl"


def migrate_to_3(directory: Path) -> str:
    """3.0.0: number the JSON lines (``seq``)."""
    import json

    path = directory / JSONL
    if not path.exists():
        _fail_halfway("3.0.0")
        return "no history yet"
    entries = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln]
    tmp = path.with_name(path.name + ".new")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, e in enumerate(entries, 1):
            f.write(json.dumps({"seq": i, **e}) + "\n")
    # Half the work done (the new file written, not yet in place): a failing build stops here.
    _fail_halfway("3.0.0")
    os.replace(tmp, path)
    return f"history.jsonl: numbered {len(entries)} entries (seq)"


def downgrade_from_2(directory: Path) -> str:
    """Down-migration 2.0.0: ``history.jsonl`` -> ``history.txt`` (plain lines; ``seq`` is
    dropped), undoing :func:`migrate_to_2` for a downgrade to 1.x."""
    src, dst = directory / JSONL, directory / TEXT
    if not src.exists():
        _fail_halfway("down 2.0.0")
        return "no history yet"
    entries = read(directory)
    with open(dst, "w", encoding="utf-8") as f:
        for i, e in enumerate(entries):
            f.write(f"{e.get('time', '')} {e.get('event', '')}\n")
            if i == len(entries) // 2:
                f.flush()
                _fail_halfway("down 2.0.0")  # half of history.txt written, jsonl still there
    src.unlink()
    return f"history.jsonl ({len(entries)} entries) -> history.txt"


def check(directory: Path) -> None:
    """Health check: the state is in this build's format and readable.

    Raises:
        RuntimeError: it is not.
    """
    if failing_health_on_purpose():
        raise RuntimeError(f"health check failed on purpose (build {VERSION} is marked failhealth)")
    fmt = format_of(VERSION)
    if fmt == 1:
        if (directory / JSONL).exists():
            raise RuntimeError("history.jsonl found, but this build reads history.txt")
        return
    if (directory / TEXT).exists():
        raise RuntimeError("history.txt found, but this build reads history.jsonl")
    for entry in read(directory):
        if "event" not in entry or (fmt == 3 and "seq" not in entry):
            raise RuntimeError(f"history entry {entry!r} is not in format {fmt}")

