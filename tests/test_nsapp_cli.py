"""nsapp's command line: usage errors say what the option expects (no namespaces needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def nsapp(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "nsapp", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--tmpfs", "relative", "invalid tmpfs mount (an absolute DST) value: 'relative'"),
        ("--bind", "a:b", "invalid bind mount (SRC:DST with an absolute DST) value: 'a:b'"),
    ],
)
def test_a_bad_mount_option_names_the_form_it_expects(
    option: str, value: str, expected: str
) -> None:
    proc = nsapp("run", option, value, "--", "true")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"nsapp run: error: argument {option}: {expected} (see `nsapp run --help`)"
    ]
