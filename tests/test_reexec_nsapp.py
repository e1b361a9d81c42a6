"""The example app's foundation commands, from a real .pyz and from the source tree."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("requests", "cryptography", "tuf", "urllib3", "securesystemslib")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return env


def _run(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    proc: subprocess.CompletedProcess[str] = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        **kw,  # type: ignore[call-overload]
    )
    return proc


def _imported(stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", line)
        if m:
            names.add(m.group(1))
    return names


def test_version_from_pyz(build_pyz) -> None:  # type: ignore[no-untyped-def]
    proc = _run(str(build_pyz("1.0.0")), "--version")
    assert (proc.returncode, proc.stdout) == (0, "nsapp 1.0.0\n"), proc.stderr


def test_version_imports_nothing_heavy(build_pyz) -> None:  # type: ignore[no-untyped-def]
    proc = _run("-X", "importtime", str(build_pyz("1.0.0")), "--version")
    assert proc.returncode == 0, proc.stderr
    imported = _imported(proc.stderr)
    assert "nsapp._version" in imported  # the measurement works
    heavy = {n for n in imported if n.split(".")[0] in HEAVY}
    assert not heavy, f"--version imported {sorted(heavy)}"


def test_reexec_demo_from_pyz(build_pyz) -> None:  # type: ignore[no-untyped-def]
    proc = _run(str(build_pyz("1.0.0")), "reexec-demo", "a b", "ü")
    assert proc.returncode == 0, proc.stderr
    parent = re.search(r"^parent pid=(\d+)$", proc.stdout, re.M)
    child = re.search(r"^child  pid=(\d+) name='reexec-demo-child' status=0$", proc.stdout, re.M)
    assert parent and child, proc.stdout
    assert parent.group(1) != child.group(1)
    # The child's own report: its PID (the one the parent saw) and its argv.
    line = f"pid={child.group(1)} argv=['reexec-demo-child', 'a b', 'ü']"
    assert line in proc.stdout.splitlines()


def test_registered_child_imports_nothing_heavy(build_pyz) -> None:  # type: ignore[no-untyped-def]
    # -X importtime is passed on to the fast child, so stderr holds both processes' imports.
    proc = _run("-X", "importtime", str(build_pyz("1.0.0")), "reexec-demo")
    assert proc.returncode == 0, proc.stderr
    imported = _imported(proc.stderr)
    assert "reexec_core._child" in imported
    heavy = {n for n in imported if n.split(".")[0] in HEAVY}
    assert not heavy, f"reexec-demo and its child imported {sorted(heavy)}"


def test_version_from_source_tree() -> None:
    from nsapp._version import VERSION

    proc = _run("-m", "nsapp", "--version", cwd=REPO)
    assert proc.stdout == f"nsapp {VERSION}\n", proc.stderr


def _subcommands() -> list[str]:
    from nsapp.cli import build_parser

    parser = build_parser()
    names: list[str] = []
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            names.extend(choices)
    return names


def test_every_command_has_help() -> None:
    commands = _subcommands()
    assert "reexec-demo" in commands
    for argv in [["--help"], *([c, "--help"] for c in commands)]:
        proc = _run("-m", "nsapp", *argv, cwd=REPO)
        assert proc.returncode == 0, (argv, proc.stderr)
        assert proc.stdout.startswith("usage: nsapp"), (argv, proc.stdout)


def test_release_config_absent_in_a_dev_checkout() -> None:
    import selfupdate

    assert selfupdate.build_info() is None


def test_release_config_embedded_by_build(build_pyz, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = b'{"signed": {"_type": "root"}, "signatures": []}\n'
    pyz = build_pyz("1.0.0", trusted_root=root, repo_url="http://127.0.0.1:8123/repo")
    # shiv's SHIV_ENTRY_POINT runs another function of the archive: print what it sees.
    env = dict(_env(), SHIV_ENTRY_POINT="selfupdate._release:build_info")
    proc = subprocess.run(
        [sys.executable, str(pyz)], capture_output=True, text=True, env=env, timeout=120
    )
    assert (
        "BuildInfo(app='nsapp', version='1.0.0', channel='stable', "
        "repo_url='http://127.0.0.1:8123/repo')"
    ) in proc.stderr, proc.stderr


def test_command_modules_import_nothing_heavy() -> None:
    # Every registered child imports command modules before init() dispatches: the contract
    # is that they import heavy libraries inside their handlers only.
    code = "import nsapp.cli as c; c._load_commands()"
    proc = _run("-X", "importtime", "-c", code, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    imported = _imported(proc.stderr)
    assert set(__import__("nsapp.cli").cli.COMMAND_MODULES) <= imported
    heavy = {n for n in imported if n.split(".")[0] in HEAVY}
    assert not heavy, f"importing the command modules imported {sorted(heavy)}"


def test_ctrl_c_ends_a_command_with_one_line_and_status_130(tmp_path: Path) -> None:
    """SIGINT to a running command (here the long-running ``serve``) is the user's choice:
    one line, exit 130, no traceback."""
    import signal

    env = dict(_env(), PYTHONPATH=str(REPO), NSAPP_STATE_DIR=str(tmp_path / "state"))
    # Through a wrapper that restores SIGINT's default: a suite started with SIGINT ignored
    # (`make test &`) hands SIG_IGN down, and Python then installs no KeyboardInterrupt.
    sigint_default = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", sigint_default, "-m", "nsapp", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("pid=")  # running its loop
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == "nsapp: interrupted\n"


PROBE_CHILD = """
import json, re, subprocess, sys
import reexec_core

def main():
    reexec_core.init()
    argv = reexec_core.command("reexec-true").argv
    argv[1:1] = ["-X", "importtime"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    names = re.findall(r"import time:\\s+\\d+ \\|\\s+\\d+ \\|\\s+(\\S+)", proc.stderr)
    print(json.dumps({"status": proc.returncode, "modules": names}))
    return 0
"""


def test_registered_child_of_the_pyz_stays_lean(build_pyz, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # The round trip's cost is what the child imports: reading the build's version
    # (nsapp._version -> selfupdate.build_info) must not bring os, typing or json with it.
    (tmp_path / "probe_child.py").write_text(PROBE_CHILD)
    env = dict(_env(), SHIV_ENTRY_POINT="probe_child:main",
               SHIV_PREPEND_PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, str(build_pyz("1.0.0"))], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["status"] == 0
    modules = set(seen["modules"])
    assert "nsapp._version" in modules and "selfupdate._release" in modules  # it measured
    assert not modules & {"os", "typing", "json", "dataclasses", "site", "importlib"}, modules
