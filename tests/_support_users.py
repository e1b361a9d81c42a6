"""The second user of the tests: who it is, how to act as it, and directories it can reach.

The root pass plants files as ``nobody`` through ``setpriv`` (the unprivileged pass is
``nobody`` itself and skips what needs a second user). pytest's ``tmp_path`` is root's and
mode 0700, so what another user must reach lives in a directory of its own under ``/tmp``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

NOBODY = 65534
ROOT = os.geteuid() == 0
#: The prefix that runs a command as ``nobody`` (no supplementary groups).
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
#: An interpreter ``nobody`` can run: pyenv's live under /root (0700).
NOBODY_PY = "/usr/bin/python3"

#: Skips a test that needs to act as a second user (root with ``setpriv``).
second_user = pytest.mark.skipif(
    not ROOT or shutil.which("setpriv") is None, reason="needs root to act as a second user"
)


def as_nobody(*cmd: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as ``nobody``, its output captured (``kw``: more of ``subprocess.run``'s)."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [*AS_NOBODY, *cmd], check=check, timeout=60, capture_output=True, text=True, **kw
    )


@contextmanager
def tmp_dir(prefix: str, mode: int = 0o700) -> Iterator[Path]:
    """A fresh directory of this user under ``/tmp`` with ``mode`` (0755: others may look in,
    0777: others may write), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(mode)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
