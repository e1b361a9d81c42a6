"""Shared helpers of the install tests (no tests here): tiny script "builds" that register
``post-update`` through ``reexec_core`` (a real trial child, started with ``command(...,
program=PATH)``), an in-memory client with ``UpdateClient``'s ``check``/``download_to``, and
the ``env`` fixture: an installed script build with some state.

Behaviours of a script build's trial: ``ok``; ``refuse`` (its migration changes the state, then
the build refuses, as :mod:`selfupdate.app` does: exit status ``TRIAL_REFUSED``, the one
verdict on a release); ``raise`` (an uncaught exception: status 1); ``exit`` (status 3 before
any migration); ``hang``.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

from selfupdate._names import TRIAL_REFUSED

REPO = Path(__file__).resolve().parent.parent

SCRIPT = '''\
import os, sys, time
sys.path.insert(0, {repo!r})
import reexec_core
VERSION = {version!r}
BEHAVIOUR = {behaviour!r}

def post_update(old, new):
    state = os.environ["TEST_STATE_DIR"]
    if BEHAVIOUR == "exit":
        os._exit(3)
    if BEHAVIOUR == "hang":
        time.sleep(3600)
    os.makedirs(state, exist_ok=True)
    if float(new) < float(old):  # a rollback: the state comes from a snapshot
        return 0
    with open(os.path.join(state, "data"), "a") as f:
        f.write(f"migrated {{old}}->{{new}}\\n")
    if BEHAVIOUR == "wipe":  # the whole state directory goes, then the migration fails
        import shutil
        shutil.rmtree(state)
        return {refused}
    if BEHAVIOUR == "steal":  # the updater's snapshot is removed behind its back
        import shutil
        shutil.rmtree(os.environ["TEST_SNAPSHOT"])
        return {refused}
    if BEHAVIOUR == "raise":
        raise RuntimeError("migration failed on purpose")
    if BEHAVIOUR == "refuse":
        print("FAILED: migration refused on purpose")
        return {refused}
    print("migration ok")
    return 0

reexec_core.register("post-update", post_update)
if not reexec_core.init():
    print(VERSION)
'''


def script(version: str, behaviour: str = "ok") -> bytes:
    return SCRIPT.format(
        repo=str(REPO), version=version, behaviour=behaviour, refused=TRIAL_REFUSED
    ).encode()


@dataclass(frozen=True)
class Rel:
    version: str
    length: int


class FakeClient:
    """check/download_to like UpdateClient, from memory."""

    def __init__(self, version: str, payload: bytes, fail: Exception | None = None) -> None:
        self.version, self.payload, self.fail = version, payload, fail
        self.downloads = 0

    def check(self, current_version: str) -> Rel | None:
        from packaging.version import Version

        if Version(self.version) <= Version(current_version):
            return None
        return Rel(self.version, len(self.payload))

    def download_to(self, release: Rel, fileobj: BinaryIO) -> None:
        self.downloads += 1
        fileobj.write(self.payload[: len(self.payload) // 2])
        if self.fail is not None:
            raise self.fail
        fileobj.write(self.payload[len(self.payload) // 2 :])


@pytest.fixture(name="env")
def env_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    d = tmp_path / "bin"
    d.mkdir()
    app = d / "app.py"
    app.write_bytes(script("1.0"))
    app.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    (state / "data").write_text("v1 data\n")
    monkeypatch.setenv("TEST_STATE_DIR", str(state))
    return app, state


def run_app(app: Path) -> str:
    return subprocess.run(
        [sys.executable, str(app)], capture_output=True, text=True, check=True
    ).stdout.strip()


def tree(d: Path) -> dict[str, bytes]:
    if not d.exists():
        return {}
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
