"""./build.sh: reproducible, lean single-file builds."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _build(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(
        ["bash", str(REPO / "build.sh"), *args], capture_output=True, text=True, env=env,
        timeout=900,
    )  # fmt: skip


def test_two_builds_are_byte_identical(build_pyz, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build_pyz("1.0.0")  # fills the dependency cache once
    cache = os.environ.get("NSAPP_BUILD_CACHE")
    outs = []
    for name in ("one", "two"):
        proc = _build("--version", "1.0.0", "--out", str(tmp_path / name / "nsapp.pyz"))
        assert proc.returncode == 0, proc.stderr
        # The path is the last line of the output.
        assert proc.stdout.strip().splitlines()[-1] == str(tmp_path / name / "nsapp.pyz")
        outs.append(tmp_path / name / "nsapp.pyz")
    assert cache == os.environ.get("NSAPP_BUILD_CACHE")
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert outs[0].read_bytes() == build_pyz("1.0.0").read_bytes()


def test_versions_differ_only_by_their_stamp(build_pyz) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = build_pyz("1.0.0"), build_pyz("2.0.0")
    assert v1.read_bytes() != v2.read_bytes()
    for pyz, version in ((v1, "1.0.0"), (v2, "2.0.0")):
        with zipfile.ZipFile(pyz) as zf:
            stamp = zf.read("site-packages/nsapp/_version.py").decode()
        assert f'VERSION = "{version}"' in stamp
        out = subprocess.run(
            [sys.executable, str(pyz), "--version"], capture_output=True, text=True, timeout=120
        ).stdout
        assert out == f"nsapp {version}\n"


def test_pyz_carries_no_build_tools(build_pyz) -> None:  # type: ignore[no-untyped-def]
    with zipfile.ZipFile(build_pyz("1.0.0")) as zf:
        names = zf.namelist()
    top = {n.split("/")[1] for n in names if n.startswith("site-packages/") and n.count("/") > 1}
    for tool in ("pip", "setuptools", "shiv", "_distutils_hack", "pkg_resources", "wheel"):
        assert tool not in top, f"{tool} is inside the pyz"
    assert not [n for n in names if n.endswith(".pyc")]
    assert {"reexec_core", "nsapp", "requests", "tuf", "cryptography"} <= top
    # shiv's runtime bootstrap is there; its builder is not.
    assert "_bootstrap/__init__.py" in names and "__main__.py" in names
    with open(build_pyz("1.0.0"), "rb") as f:
        assert f.readline() == b"#!/usr/bin/env python3\n"


def test_release_files_only_when_asked(build_pyz, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root.json"
    root.write_bytes(b'{"signed": {"_type": "root"}}\n')
    with zipfile.ZipFile(build_pyz("1.0.0")) as zf:
        assert not [n for n in zf.namelist() if "/_release/" in n]
    with zipfile.ZipFile(build_pyz("1.0.0", trusted_root=root, repo_url="file:///r")) as zf:
        assert zf.read("site-packages/nsapp/_release/trusted_root.json") == root.read_bytes()
        assert zf.read("site-packages/nsapp/_release/repo_url.txt") == b"file:///r\n"


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--version", "1.0 bad"],
        ["--trusted-root", "/nonexistent/root.json"],
        ["--trusted-root", "{not_root}"],  # exists, but is no TUF root
        ["--repo-url"],  # no value
    ],
)
def test_bad_arguments_are_refused(args: list[str], tmp_path: Path) -> None:
    not_root = tmp_path / "targets.json"
    not_root.write_text('{"signed": {"_type": "targets"}}')
    proc = _build("--out", str(tmp_path / "x.pyz"), *(a.format(not_root=not_root) for a in args))
    assert proc.returncode != 0 and proc.stderr.startswith("build.sh: "), proc.stderr
    assert "line " not in proc.stderr.splitlines()[0]  # not bash's own "line N:" diagnostics
    assert not (tmp_path / "x.pyz").exists()


def test_unprivileged_pass_runs_as_the_expected_user() -> None:
    # `make test` as root runs the suite again as nobody and sets these; prove it got them.
    uid = os.environ.get("NSAPP_EXPECT_UID")
    if uid is None:
        pytest.skip("only in make test's unprivileged pass (NSAPP_EXPECT_UID unset)")
    assert os.getuid() == int(uid) and os.geteuid() == int(uid)
    assert os.path.dirname(os.__file__) == os.environ["NSAPP_EXPECT_STDLIB"]
    assert not os.__file__.startswith("/root/")
