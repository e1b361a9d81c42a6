"""``selfupdate build`` (and ``./build.sh``, its front door): any app, reproducible, lean."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "nsapp"


def _build(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(
        ["bash", str(REPO / "build.sh"), *args], capture_output=True, text=True, env=env,
        timeout=900, cwd=cwd,
    )  # fmt: skip


def _selfupdate_build(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    cache = os.environ.get("NSAPP_BUILD_CACHE", str(REPO / "build" / "cache"))
    return subprocess.run(
        [sys.executable, "-m", "selfupdate", "build", *args, "--cache", cache],
        capture_output=True, text=True, timeout=900, cwd=cwd,
    )  # fmt: skip


def _names(pyz: Path) -> list[str]:
    with zipfile.ZipFile(pyz) as zf:
        return zf.namelist()


def _top(names: list[str]) -> set[str]:
    return {n.split("/")[1] for n in names if n.startswith("site-packages/") and n.count("/") > 1}


def _app(root: Path, name: str = "hello", scripts: str | None = None, version: str = "1.0.0",
         deps: str = '["reexec-selfupdate"]') -> Path:
    project = root / name
    (project / "src" / name).mkdir(parents=True)
    (project / "src" / name / "__init__.py").write_text("")
    (project / "src" / name / "cli.py").write_text(
        "import sys\n\ndef main():\n    print('hello from', __name__)\n    return 0\n"
    )
    if scripts is None:
        scripts = f'{name} = "{name}.cli:main"'
    version_line = f'version = "{version}"' if version else ""
    (project / "pyproject.toml").write_text(textwrap.dedent(
        f"""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name}"
        {version_line}
        dependencies = {deps}
        [project.scripts]
        """
    ) + scripts + "\n")
    return project


def test_two_builds_are_byte_identical_from_two_checkout_paths(build_pyz, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build_pyz("1.0.0")  # fills the dependency cache once
    outs = []
    for name in ("one", "two"):
        copy = tmp_path / name / "checkout"
        shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info"))
        out = tmp_path / name / "nsapp.pyz"
        proc = _selfupdate_build(str(copy), "--version", "1.0.0", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        # The path is the last line of the output.
        assert proc.stdout.strip().splitlines()[-1] == str(out)
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert outs[0].read_bytes() == build_pyz("1.0.0").read_bytes()


def test_versions_differ_only_by_their_stamp(build_pyz) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = build_pyz("1.0.0"), build_pyz("2.0.0")
    assert v1.read_bytes() != v2.read_bytes()
    for pyz, version in ((v1, "1.0.0"), (v2, "2.0.0")):
        with zipfile.ZipFile(pyz) as zf:
            stamp = zf.read("site-packages/selfupdate/_build_config.py").decode()
            meta = zf.read(f"site-packages/nsapp-{version}.dist-info/METADATA").decode()
        assert f"VERSION = {version!r}" in stamp
        assert f"\nVersion: {version}\n" in meta
        out = subprocess.run(
            [sys.executable, str(pyz), "--version"], capture_output=True, text=True, timeout=120
        ).stdout
        assert out == f"nsapp {version}\n"


def test_pyz_carries_no_build_tools(build_pyz) -> None:  # type: ignore[no-untyped-def]
    names = _names(build_pyz("1.0.0"))
    top = _top(names)
    for tool in ("pip", "setuptools", "shiv", "_distutils_hack", "pkg_resources", "wheel"):
        assert tool not in top, f"{tool} is inside the pyz"
    # No bytecode of the build machine's, but the fast start's own, checked against its
    # source at every start (test_fast_start.test_main_comes_with_its_checked_bytecode).
    assert [n for n in names if n.endswith(".pyc")] == ["__main__.pyc"]
    assert not [n for n in names if n.startswith("site-packages/selfupdate/build/")]
    assert not [n for n in names if n.endswith("direct_url.json")]  # no checkout path
    assert {"reexec_core", "selfupdate", "nsapp", "requests", "tuf", "cryptography"} <= top
    # shiv's runtime bootstrap is there; its builder is not.
    assert "_bootstrap/__init__.py" in names and "__main__.py" in names
    with open(build_pyz("1.0.0"), "rb") as f:
        # env -S splits the line: python3 starts isolated and without the host's site.
        assert f.readline() == b"#!/usr/bin/env -S python3 -I -S\n"
    # The fast start is the archive's __main__, first in it, beside the slow gate.
    assert names[0] == "__main__.py"
    assert {"_selfupdate_boot.py", "_selfupdate_trust.py"} <= set(names)


def test_release_configuration_embedded_only_as_asked(build_pyz, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root.json"
    root.write_bytes(b'{"signed": {"_type": "root"}}\n')
    with zipfile.ZipFile(build_pyz("1.0.0")) as zf:
        assert "site-packages/selfupdate/_release_root.json" not in zf.namelist()
        config = zf.read("site-packages/selfupdate/_build_config.py").decode()
        assert "REPO_URL = None" in config and "TRUSTED_ROOT = False" in config
    with zipfile.ZipFile(build_pyz("1.0.0", trusted_root=root, repo_url="file:///r")) as zf:
        assert zf.read("site-packages/selfupdate/_release_root.json") == root.read_bytes()
        config = zf.read("site-packages/selfupdate/_build_config.py").decode()
        assert "REPO_URL = 'file:///r'" in config and "TRUSTED_ROOT = True" in config
        assert "APP = 'nsapp'" in config and "CHANNEL = 'stable'" in config


def test_a_users_app_outside_the_repository(build_pyz, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    build_pyz("1.0.0")  # the dependency cache
    project = _app(tmp_path)
    proc = _selfupdate_build(str(project), "--channel", "beta", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert out == project / "dist" / "hello-1.0.0.pyz"
    names = _names(out)
    assert not [n for n in names if "nsapp" in n], "the example app is inside a user's build"
    assert {"hello", "reexec_core", "selfupdate"} <= _top(names)
    with zipfile.ZipFile(out) as zf:
        assert "CHANNEL = 'beta'" in zf.read("site-packages/selfupdate/_build_config.py").decode()
    run = subprocess.run([sys.executable, str(out)], capture_output=True, text=True, timeout=120)
    assert run.stdout == "hello from hello.cli\n", run.stderr


def test_an_app_without_the_framework_is_packed_without_it(build_pyz, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = _app(tmp_path, deps="[]")
    proc = _selfupdate_build(str(project))
    assert proc.returncode == 0, proc.stderr
    assert not {"reexec_core", "selfupdate"} & _top(_names(Path(proc.stdout.split()[-1])))
    proc = _selfupdate_build(str(project), "--repo-url", "https://example.org/r/")
    assert proc.returncode == 2
    assert "does not depend on reexec-selfupdate" in proc.stderr


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("no-pyproject", "has no pyproject.toml"),
        ("no-script", "declares no [project.scripts] entry"),
        ("two-scripts", "declares several console scripts"),
        ("no-version", "has no static [project] version"),
        ("bad-version", "bad version"),
        ("not-root", "is not TUF root metadata"),
        ("missing-root", "No such file"),
        ("bad-entry", "is not MODULE:FUNCTION"),
    ],
)
def test_a_build_that_cannot_be_made_is_one_sentence_and_exit_2(
    case: str, expect: str, tmp_path: Path
) -> None:
    args: list[str] = []
    if case == "no-pyproject":
        project = tmp_path / "empty"
        project.mkdir()
    elif case == "no-script":
        project = _app(tmp_path, scripts="")
    elif case == "two-scripts":
        project = _app(tmp_path, scripts='a = "hello.cli:main"\nb = "hello.cli:main"')
    elif case == "no-version":
        project = _app(tmp_path, version="")
    else:
        project = _app(tmp_path)
    if case == "bad-version":
        args = ["--version", "1.0 bad"]
    elif case == "not-root":
        (tmp_path / "targets.json").write_text('{"signed": {"_type": "targets"}}')
        args = ["--trusted-root", str(tmp_path / "targets.json")]
    elif case == "missing-root":
        args = ["--trusted-root", str(tmp_path / "nonexistent.json")]
    elif case == "bad-entry":
        args = ["--entry-point", "not an entry"]
    out = tmp_path / "x.pyz"
    proc = _selfupdate_build(str(project), "--out", str(out), *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfupdate build: "), proc.stderr
    assert expect in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("args", [["--bogus"], ["--repo-url"]])
def test_build_sh_refuses_bad_flags_in_one_line(args: list[str], tmp_path: Path) -> None:
    proc = _build("--out", str(tmp_path / "x.pyz"), *args)
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.pyz").exists()


def test_the_framework_distribution_holds_no_example_app(
    tmp_path: Path, framework_checkout: Path
) -> None:
    # pip install of the framework installs reexec_core and selfupdate, nothing else.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
         str(framework_checkout)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("reexec_selfupdate-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"reexec_core", "selfupdate"}
    assert not [n for n in names if "nsapp" in n]
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in names if n.endswith("/METADATA"))).decode()
        assert not [n for n in names if n.endswith("entry_points.txt")] or "nsapp" not in (
            zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        )
    assert "Provides-Extra: build" in meta


def test_unprivileged_pass_runs_as_the_expected_user() -> None:
    # `make test` as root runs the suite again as nobody and sets these; prove it got them.
    uid = os.environ.get("NSAPP_EXPECT_UID")
    if uid is None:
        pytest.skip("only in make test's unprivileged pass (NSAPP_EXPECT_UID unset)")
    assert os.getuid() == int(uid) and os.geteuid() == int(uid)
    assert os.path.dirname(os.__file__) == os.environ["NSAPP_EXPECT_STDLIB"]
    assert not os.__file__.startswith("/root/")


@pytest.mark.parametrize("pth", [False, True])
def test_a_site_packages_with_pth_files_starts_through_shivs_bootstrap(
    tmp_path: Path, pth: bool
) -> None:
    """shiv's bootstrap runs site.addsitedir (and so the .pth files of the extraction); the
    fast start only puts site-packages on sys.path, so such a build is not given one."""
    import ast
    import json

    from selfupdate.build import _add_fast_start

    packed = tmp_path / "app.pyz"
    with zipfile.ZipFile(packed, "w") as zf:
        zf.writestr("__main__.py", "import _bootstrap\n")
        zf.writestr("environment.json", json.dumps({"build_id": "b1d", "root": None}))
        zf.writestr("site-packages/app/__init__.py", "")
        if pth:
            zf.writestr("site-packages/nspkg.pth", "import os\n")
    _add_fast_start(packed, "app:main")
    with zipfile.ZipFile(packed) as zf:
        main = zf.read("__main__.py").decode()
    line = next(x for x in main.splitlines() if x.endswith("# the record"))
    record = ast.literal_eval(line.split(" = ", 1)[1].rsplit("  #", 1)[0])
    assert record[0] == "b1d"
    assert record[1] == (None if pth else "app:main")
