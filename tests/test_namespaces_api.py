"""namespaces.run behaves the same with and without a terminal (framework issue).

A command that cannot be started is a ``CommandError`` raised to the caller in both cases:
the library never prints in the app's name, and code tried at a terminal behaves the same
under cron. The app's CLI turns it into its one sentence and status 127.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    subprocess.run(["unshare", "-Urpf", "--mount-proc", "true"], capture_output=True).returncode
    != 0,
    reason="this kernel or policy refuses unprivileged user+pid namespaces (unshare -Urpf)",
)

PROBE = textwrap.dedent(
    """
    import os, sys
    from reexec_core import namespaces
    try:
        status = namespaces.run(["no-such-command-here"])
    except namespaces.CommandError as e:
        print("RAISED", type(e).__name__, "|", e, flush=True)
    else:
        print("RETURNED", status, flush=True)
    try:  # the runner reaped what it started: no child left, running or a zombie
        print("CHILD LEFT", os.waitpid(-1, os.WNOHANG), flush=True)
    except ChildProcessError:
        print("NO CHILD LEFT", flush=True)
    """
)


def _in_a_pty(argv: list[str], timeout: float = 60) -> bytes:
    pid, master = pty.fork()
    if pid == 0:
        try:
            os.execve(argv[0], argv, dict(os.environ, PYTHONPATH=str(REPO)))
        finally:
            os._exit(127)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
    os.waitpid(pid, 0)
    os.close(master)
    return out


def test_a_command_that_cannot_start_raises_the_same_with_and_without_a_terminal() -> None:
    plain = subprocess.run(
        [sys.executable, "-c", PROBE], stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    at_terminal = _in_a_pty([sys.executable, "-c", PROBE]).decode(errors="replace")
    for out in (plain.stdout, at_terminal):
        line = next(x for x in out.splitlines() if x.startswith(("RAISED", "RETURNED")))
        assert line.startswith("RAISED CommandError | "), out
        assert "no-such-command-here" in line
        assert "NO CHILD LEFT" in out, out
    # Nothing printed on its own: the library speaks only through the exception.
    assert plain.stderr == ""
    assert "no-such-command-here" not in at_terminal.split("RAISED")[0]


def test_the_cli_prints_the_sentence_and_exits_127() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nsapp", "run", "--", "no-such-command-here"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 127, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nsapp"), proc.stderr
    assert "no-such-command-here" in lines[0] and "Traceback" not in proc.stderr
