"""reexec_core end to end: one suite over every way a Python program is started.

A small test app (``rxapp``, written below into a temporary directory) registers entry points
and is started as a plain script, a script by relative path that then changes directory,
``python -m``, a console script in a virtual environment, and a shiv ``.pyz`` (by absolute
path, by relative path, through a symlink). Each build of the app carries a marker (``src``,
``pyz``, ``other``) and the child reports it, so a child that ran the wrong program, lost the
venv or went through shiv's bootstrap again makes the tests fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux")
# Prefix for a child that must take Ctrl-C: a suite started with SIGINT ignored (`make test &`,
# some CI runners) hands SIG_IGN down, and Python installs no KeyboardInterrupt handler for an
# ignored SIGINT. A signal set to its default stays default across execve (signal(7)).
SIGINT_DEFAULT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])",
]

CORE_PY = r"""
import json
import os
import signal
import subprocess
import sys
import time

import reexec_core
from rxapp._marker import BUILD


def _report(kind, **extra):
    from reexec_core import _libc

    try:
        import venvonly  # exists only in the test venv's site-packages
        venv_import = venvonly.VALUE
    except ImportError:
        venv_import = None
    data = {
        "kind": kind,
        "build": BUILD,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "argv": sys.argv,
        "name": reexec_core.current_name(),
        "comm": open("/proc/self/comm", encoding="utf-8").read().rstrip("\n"),
        "pdeathsig": _libc.get_pdeathsig(),
        "prefix": sys.prefix,
        "venv_import": venv_import,
        "no_site": sys.flags.no_site,
        "shiv_bootstrap": "_bootstrap" in sys.modules,
        "site": "site" in sys.modules,
        "self_argv": reexec_core.self_argv(),
        "env_leak": [k for k in os.environ if k.startswith("REEXEC_CORE_")] != [],
        "sigint_blocked": signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []),
        "cwd": os.getcwd(),
    }
    data.update(extra)
    print(json.dumps(data), flush=True)


def report(*args):
    _report("child", args=list(args))
    return 0


def report_status(*args):
    _report("child", args=list(args))
    return int(args[0]) % 256


def status(*args):
    if not args:
        return None
    return int(args[0])


def boom(*args):
    raise RuntimeError("boom from the entry point")


def interrupted(*args):
    raise KeyboardInterrupt


def sysexit(*args):
    value = args[0]
    raise SystemExit(int(value) if value.lstrip("-").isdigit() else value)


def spawn_main(*args):
    # An ordinary subprocess of the same program must get main, not this entry point again.
    out = subprocess.run(
        reexec_core.self_argv() + ["main-report", *args], capture_output=True, text=True
    )
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    return out.returncode


def nested(*args):
    # A registered child starting another registered child (a grandchild).
    return reexec_core.command("report", "grandchild", *args).run().returncode


def sleeper(*args):
    print(json.dumps({"pid": os.getpid(), "kind": "sleeper"}), flush=True)
    time.sleep(600)
    return 0


def exec_self(*args):
    _report("before-exec")
    reexec_core.exec_into("report", *args)


def exec_other(program, *args):
    _report("before-exec")
    reexec_core.exec_into("report", *args, program=program)


reexec_core.register("report", report)
reexec_core.register("status", status)
reexec_core.register("report-status", report_status)
reexec_core.register("boom", boom)
reexec_core.register("sysexit", sysexit)
reexec_core.register("interrupted", interrupted)
reexec_core.register("spawn-main", spawn_main)
reexec_core.register("nested", nested)
reexec_core.register("sleeper", sleeper)
reexec_core.register("exec-self", exec_self)
reexec_core.register("exec-other", exec_other)
reexec_core.register("a-rather-long-entry-name", report)


# A slow start of the program that exec_into() starts (as a .pyz's shiv bootstrap is):
# main creates the marker just before exec_into, so only the new process waits here.
_slow = os.environ.get("RXAPP_SLOW_START")
if _slow and os.path.exists(_slow):
    os.unlink(_slow)
    time.sleep(5)


def main():
    if reexec_core.init():
        return 0
    args = sys.argv[1:]
    action = args.pop(0) if args else "main-report"
    away = os.environ.get("RXAPP_CHDIR")
    if away:
        # "Self" must not depend on the directory the program was started from.
        os.chdir(away)
    if action == "main-report":
        _report("main", args=args)
        return 0
    if action == "child":
        name, *rest = args
        sig = os.environ.get("RXAPP_PDEATHSIG", "default")
        kw = {} if sig == "default" else {"pdeathsig": None if sig == "none" else int(sig)}
        program = os.environ.get("RXAPP_PROGRAM")
        if program:
            kw["program"] = program
        return reexec_core.command(name, *rest, **kw).run().returncode
    if action == "popen-sleep":
        sig = os.environ.get("RXAPP_PDEATHSIG", "default")
        kw = {} if sig == "default" else {"pdeathsig": None if sig == "none" else int(sig)}
        proc = reexec_core.command("sleeper", **kw).popen(stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        print(json.dumps({"parent": os.getpid(), "child": proc.pid, "line": line}), flush=True)
        time.sleep(600)
        return 0
    if action == "many":
        n = int(args[0])
        # All started before any is waited for: n children run at the same time.
        procs = [
            reexec_core.command("report-status", str(i)).popen(stdout=subprocess.PIPE, text=True)
            for i in range(n)
        ]
        outs = [p.communicate()[0] for p in procs]
        codes = [p.returncode for p in procs]
        print(json.dumps({"outs": outs, "codes": codes, "pids": [p.pid for p in procs]}))
        return 0
    if action == "exec":
        name, *rest = args
        _report("before-exec")
        reexec_core.exec_into(name, *rest)
    if action == "exec-slow":
        open(os.environ["RXAPP_SLOW_START"], "w").close()
        _report("before-exec")
        reexec_core.exec_into("report")
    if action == "exec-program":
        program, name, *rest = args
        _report("before-exec")
        reexec_core.exec_into(name, *rest, program=program)
    print("unknown action " + action, file=sys.stderr)
    return 2
"""

MAIN_PY = """\
import sys

from rxapp.core import main

if __name__ == "__main__":
    sys.exit(main())
"""

SCRIPT_PY = """\
import sys

from rxapp.core import main

sys.exit(main())
"""

# What pip writes for a console script (pip._vendor.distlib's launcher template).
CONSOLE_SCRIPT = """\
#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from rxapp.core import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""

# Arguments that a shell, a naive join or an encoding step would mangle.
TRICKY_ARGS = [
    "plain",
    "with spaces  and  tabs\t",
    "quotes ' \" `backticks` $HOME",
    "non-ASCII: wörld 日本語 ✓",
    "",
    "--flag",
    "-c",
    "line\nbreak",
    "back\\slash",
    "undecodable byte \udcff (surrogateescape)",
]


def _write_app(dest: Path, build: str) -> Path:
    """Write the test app's source (rxapp + a copy of reexec_core) into dest."""
    pkg = dest / "rxapp"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "_marker.py").write_text(f"BUILD = {build!r}\n")
    (pkg / "core.py").write_text(CORE_PY)
    (pkg / "__main__.py").write_text(MAIN_PY)
    (dest / "app.py").write_text(SCRIPT_PY)
    shutil.copytree(
        REPO / "reexec_core", dest / "reexec_core", ignore=shutil.ignore_patterns("__pycache__")
    )
    return dest


def _shiv(src: Path, out: Path) -> Path:
    """Build src into a .pyz with shiv, the way build.sh does (no dependencies)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shiv",
            "--reproducible",
            "--python",
            "/usr/bin/env python3",
            "--entry-point",
            "rxapp.core:main",
            "--site-packages",
            str(src),
            "--output-file",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return out


@dataclass
class App:
    root: Path
    src: Path
    pyz: Path
    other_pyz: Path
    venv: Path | None
    venv_error: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory) -> App:
    root = tmp_path_factory.mktemp("rxapp")
    src = _write_app(root / "src", "src")
    import importlib.util

    if importlib.util.find_spec("shiv") is None:
        pytest.skip("shiv is not installed for this interpreter (pip install -e '.[dev]')")
    pyz_dir = root / "pyz"
    pyz_dir.mkdir()
    pyz = _shiv(_write_app(root / "stage-pyz", "pyz"), pyz_dir / "rxapp.pyz")
    (root / "other").mkdir()
    other = _shiv(_write_app(root / "stage-other", "other"), root / "other" / "rxapp.pyz")
    (root / "links").mkdir()
    (root / "links" / "linked.pyz").symlink_to(pyz)
    # A venv whose site-packages alone holds rxapp (via a .pth) and the module "venvonly".
    venv = root / "venv"
    proc = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return App(root, src, pyz, other, None, venv_error=proc.stderr)
    vpy = venv / "bin" / "python"
    sp = subprocess.run(
        [str(vpy), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    site_dir = Path(sp)
    (site_dir / "rxapp-src.pth").write_text(str(src) + "\n")
    (site_dir / "venvonly.py").write_text("VALUE = 'from-the-venv'\n")
    script = venv / "bin" / "rxapp"
    script.write_text(CONSOLE_SCRIPT.format(python=vpy))
    script.chmod(0o755)
    return App(root, src, pyz, other, venv)


@dataclass
class Mode:
    """How to start the app: argv prefix, working directory, expected build marker."""

    argv: list[str]
    cwd: Path
    build: str
    venv: Path | None = None
    path: str | None = None  # PATH for the child (for a shebang's "env python3")


MODES = [
    "script",
    "script-relative-after-chdir",
    "module",
    "venv-console-script",
    "pyz",
    "pyz-relative-after-chdir",
    "pyz-symlink",
    "pyz-executable",
]


def _mode(app: App, mode: str) -> Mode:
    exe = sys.executable
    if mode == "script":
        return Mode([exe, str(app.src / "app.py")], app.root, "src")
    if mode == "script-relative-after-chdir":
        return Mode([exe, "src/app.py"], app.root, "src")
    if mode == "module":
        return Mode([exe, "-m", "rxapp"], app.src, "src")
    if mode == "venv-console-script":
        if app.venv is None:
            pytest.skip(f"cannot create a venv here: {app.venv_error.strip()}")
        return Mode([str(app.venv / "bin" / "rxapp")], app.root, "src", venv=app.venv)
    if mode == "pyz":
        return Mode([exe, str(app.pyz)], app.root, "pyz")
    if mode == "pyz-relative-after-chdir":
        return Mode([exe, "rxapp.pyz"], app.pyz.parent, "pyz")
    if mode == "pyz-symlink":
        return Mode([exe, str(app.root / "links" / "linked.pyz")], app.root, "pyz")
    if mode == "pyz-executable":
        # ./app.pyz through its shebang "#!/usr/bin/env python3": put this interpreter's
        # directory first on PATH (a venv's bin/ has python3) so env finds it.
        bindir = os.path.dirname(exe)
        if not os.access(os.path.join(bindir, "python3"), os.X_OK):
            pytest.skip(f"no python3 beside {exe} for the pyz's shebang to find")
        path = bindir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
        return Mode([str(app.pyz)], app.root, "pyz", path=path)
    raise AssertionError(mode)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, app: App) -> Mode:
    return _mode(app, request.param)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RXAPP_", "PYTHON"))}
    env.update(extra)
    return env


def run(
    mode: Mode, *args: str, away: Path | None = None, timeout: float = 120, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Start the app in ``mode``; with ``away`` its main chdirs there before doing anything."""
    env = _env(**extra)
    if away is not None:
        env["RXAPP_CHDIR"] = str(away)
    if mode.path is not None:
        env["PATH"] = mode.path
    return subprocess.run(
        [*mode.argv, *args],
        cwd=mode.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def reports(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture
def away(tmp_path: Path) -> Path:
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


# --- the start-mode matrix ----------------------------------------------------------------------


def test_main_runs_main(mode: Mode, away: Path) -> None:
    proc = run(mode, "main-report", "x", away=away)
    assert proc.returncode == 0, proc.stderr
    (rep,) = reports(proc.stdout)
    assert rep["kind"] == "main" and rep["build"] == mode.build
    assert rep["name"] is None


def test_child_runs_entry_point_of_the_same_build(mode: Mode, away: Path) -> None:
    main = reports(run(mode, "main-report", away=away).stdout)[0]
    proc = run(mode, "child", "report", *TRICKY_ARGS, away=away)
    assert proc.returncode == 0, proc.stderr
    (rep,) = reports(proc.stdout)
    assert rep["kind"] == "child"
    assert rep["build"] == mode.build  # the same program, not another copy found by accident
    assert rep["args"] == TRICKY_ARGS  # spaces, quotes, non-ASCII, empty, dashes intact
    assert rep["argv"] == ["report", *TRICKY_ARGS]
    assert rep["name"] == "report"
    assert rep["self_argv"] == main["self_argv"]  # the child knows "self" as its parent did
    assert rep["cwd"] == str(away)
    assert rep["env_leak"] is False


def test_child_skips_site_and_shiv_bootstrap(mode: Mode) -> None:
    proc = run(mode, "child", "report")
    (rep,) = reports(proc.stdout)
    assert rep["no_site"] == 1 and rep["site"] is False
    assert rep["shiv_bootstrap"] is False


def test_child_keeps_the_virtual_environment(mode: Mode, app: App) -> None:
    main = reports(run(mode, "main-report").stdout)[0]
    (rep,) = reports(run(mode, "child", "report").stdout)
    assert rep["prefix"] == main["prefix"]
    if mode.venv is not None:
        assert main["venv_import"] == "from-the-venv"
        assert Path(str(rep["prefix"])) == mode.venv
        assert rep["venv_import"] == "from-the-venv"


@pytest.mark.parametrize("status", ["0", "1", "7", "255"])
def test_entry_point_return_value_is_the_exit_status(mode: Mode, status: str) -> None:
    assert run(mode, "child", "status", status).returncode == int(status)


def test_entry_point_returning_none_exits_0(mode: Mode) -> None:
    assert run(mode, "child", "status").returncode == 0


def test_unknown_name_exits_127_with_a_message(mode: Mode) -> None:
    proc = run(mode, "child", "no-such-entry")
    assert proc.returncode == 127
    assert "no-such-entry" in proc.stderr and "no entry point is registered" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_uncaught_exception_prints_traceback_and_exits_1(mode: Mode) -> None:
    proc = run(mode, "child", "boom")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "RuntimeError: boom from the entry point" in proc.stderr


def test_keyboard_interrupt_in_an_entry_point_exits_130_without_traceback(mode: Mode) -> None:
    proc = run(mode, "child", "interrupted")
    assert proc.returncode == 130
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("value", "status"), [("3", 3), ("0", 0), ("a message", 1)])
def test_system_exit_as_usual(mode: Mode, value: str, status: int) -> None:
    proc = run(mode, "child", "sysexit", value)
    assert proc.returncode == status
    if status == 1:
        assert "a message" in proc.stderr


def test_name_does_not_leak_to_ordinary_subprocess(mode: Mode, away: Path) -> None:
    proc = run(mode, "child", "spawn-main", "from-child", away=away)
    assert proc.returncode == 0, proc.stderr
    (rep,) = reports(proc.stdout)
    assert rep["kind"] == "main" and rep["build"] == mode.build
    assert rep["args"] == ["from-child"]
    assert rep["name"] is None and rep["env_leak"] is False


def test_registered_child_can_start_registered_child(mode: Mode, away: Path) -> None:
    proc = run(mode, "child", "nested", "deep", away=away)
    assert proc.returncode == 0, proc.stderr
    (rep,) = reports(proc.stdout)
    assert rep["args"] == ["grandchild", "deep"] and rep["build"] == mode.build


def test_exec_into_keeps_the_pid(mode: Mode, away: Path) -> None:
    proc = run(mode, "exec", "report", "a b", "ü", away=away)
    assert proc.returncode == 0, proc.stderr
    before, after = reports(proc.stdout)
    assert before["kind"] == "before-exec" and after["kind"] == "child"
    assert after["pid"] == before["pid"]
    assert after["args"] == ["a b", "ü"] and after["build"] == mode.build
    assert after["name"] == "report"
    assert after["env_leak"] is False and after["sigint_blocked"] is False


@pytest.mark.parametrize("start", ["script", "pyz"])
def test_ctrl_c_while_exec_into_target_starts_exits_130_without_traceback(
    app: App, start: str, tmp_path: Path
) -> None:
    """SIGINT during the new process's start-up (before its main runs) is held back until
    the dispatch, which ends it with 130 instead of a traceback from the import machinery."""
    m = _mode(app, start)
    slow = tmp_path / "slow"
    proc = subprocess.Popen(
        [*SIGINT_DEFAULT, *m.argv, "exec-slow"],
        cwd=m.cwd,
        env=_env(RXAPP_SLOW_START=str(slow)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["kind"] == "before-exec"
    # The new process removes the marker at import, then waits 5 s there, before its main.
    deadline = time.monotonic() + 60
    while slow.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not slow.exists(), "the exec_into target never started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (130, ""), err
    assert "Traceback" not in err


def test_process_name_is_the_entry_name(mode: Mode) -> None:
    (rep,) = reports(run(mode, "child", "a-rather-long-entry-name").stdout)
    assert rep["comm"] == "a-rather-long-entry-name"[:15]


# --- another build: command(program=...) and exec_into(program=...) ------------------------------


@pytest.mark.parametrize("start", ["script", "pyz"])
def test_command_program_starts_the_other_build(app: App, start: str, away: Path) -> None:
    proc = run(
        _mode(app, start), "child", "report", "x y", away=away, RXAPP_PROGRAM=str(app.other_pyz)
    )
    assert proc.returncode == 0, proc.stderr
    (rep,) = reports(proc.stdout)
    assert rep["build"] == "other" and rep["args"] == ["x y"] and rep["name"] == "report"
    assert rep["env_leak"] is False  # init() removed the variable
    assert rep["pdeathsig"] == signal.SIGKILL


def test_command_program_unknown_name_exits_127(app: App) -> None:
    proc = run(_mode(app, "pyz"), "child", "nope", RXAPP_PROGRAM=str(app.other_pyz))
    assert proc.returncode == 127 and "'nope'" in proc.stderr


@pytest.mark.parametrize("start", ["script", "pyz"])
def test_exec_into_other_build_keeps_the_pid(app: App, start: str) -> None:
    proc = run(_mode(app, start), "exec-program", str(app.other_pyz), "report", "v2")
    assert proc.returncode == 0, proc.stderr
    before, after = reports(proc.stdout)
    assert before["build"] == _mode(app, start).build and after["build"] == "other"
    assert after["pid"] == before["pid"] and after["args"] == ["v2"]
    assert after["env_leak"] is False


# --- parent-death signal --------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _survives(pid: int) -> bool:
    """Is ``pid`` alive with no kill on its way: not a zombie, not exiting (PF_EXITING), no
    SIGKILL pending? Asked once its parent was reaped, so any parent-death signal was sent."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
    except FileNotFoundError:
        return False
    state, flags = fields[0], int(fields[6])
    pending = int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)
    return state not in "ZX" and not flags & 0x4 and not pending & (1 << (signal.SIGKILL - 1))


def _wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def sleeping_pair(app: App) -> Iterator[tuple[subprocess.Popen[str], dict[str, object], Mode]]:
    started: list[subprocess.Popen[str]] = []
    children: list[int] = []

    def start(mode_name: str, **extra: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
        m = _mode(app, mode_name)
        proc = subprocess.Popen(
            [*m.argv, "popen-sleep"],
            cwd=m.cwd,
            env=_env(**extra),
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        children.append(int(info["child"]))
        return proc, info

    yield start  # type: ignore[misc]
    for proc in started:
        proc.kill()
        proc.wait()
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("start", ["script", "pyz"])
def test_child_dies_when_parent_is_killed(sleeping_pair, start: str) -> None:  # type: ignore[no-untyped-def]
    parent, info = sleeping_pair(start)
    child = int(info["child"])
    assert json.loads(str(info["line"]))["pid"] == child
    assert _alive(child)
    with open(f"/proc/{child}/comm", encoding="utf-8") as f:
        assert f.read().strip() == "sleeper"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _wait_gone(child), "the registered child outlived its parent"


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux-only")
def test_pdeathsig_none_lets_the_child_survive(sleeping_pair) -> None:  # type: ignore[no-untyped-def]
    parent, info = sleeping_pair("script", RXAPP_PDEATHSIG="none")
    child = int(info["child"])
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    # The kernel sends the parent-death signal while the parent exits (before it can be
    # reaped): now the child is either marked for death or safe.
    assert _survives(child)
    os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize(("setting", "expected"), [("default", 9), ("15", 15), ("none", 0)])
def test_pdeathsig_is_set_by_the_child(app: App, setting: str, expected: int) -> None:
    proc = run(_mode(app, "pyz"), "child", "report", RXAPP_PDEATHSIG=setting)
    (rep,) = reports(proc.stdout)
    assert rep["pdeathsig"] == expected


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux-only")
def test_child_whose_parent_is_already_gone_exits() -> None:
    # The window between spawn and prctl: the child compares getppid() with the pid handed
    # over. Hand over a pid that is not our parent and the child must kill itself at once.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from reexec_core import _registry; _registry.start_child('x', 15, 1);"
        "print('survived')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGTERM and "survived" not in proc.stdout


# --- many at once, ps ---------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["script", "pyz"])
def test_100_children_at_once_report_their_own_status(app: App, start: str) -> None:
    proc = run(_mode(app, start), "many", "100", timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["codes"] == [i % 256 for i in range(100)]
    seen = [reports(out)[0] for out in result["outs"]]
    assert [r["args"] for r in seen] == [[str(i)] for i in range(100)]
    assert [r["pid"] for r in seen] == result["pids"]
    assert len(set(result["pids"])) == 100


@pytest.mark.skipif(shutil.which("ps") is None, reason="ps(1) is not installed")
def test_ps_shows_the_entry_name(sleeping_pair) -> None:  # type: ignore[no-untyped-def]
    _, info = sleeping_pair("pyz")
    out = subprocess.run(
        ["ps", "-o", "comm=", "-p", str(info["child"])], capture_output=True, text=True
    ).stdout
    assert out.strip() == "sleeper"


# --- in-process contract ----------------------------------------------------------------------


def _py(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_register_rejects_bad_names_and_duplicates() -> None:
    import reexec_core

    name = f"test-dup-{os.getpid()}"
    reexec_core.register(name, lambda: 0)
    with pytest.raises(ValueError, match="already registered"):
        reexec_core.register(name, lambda: 0)
    for bad in ["", "a/b", "a\0b"]:
        with pytest.raises(ValueError):
            reexec_core.register(bad, lambda: 0)
    with pytest.raises(TypeError):
        reexec_core.register("not-callable", 42)  # type: ignore[arg-type]


def test_init_returns_false_for_an_ordinary_start() -> None:
    import reexec_core

    assert reexec_core.init() is False
    assert reexec_core.current_name() is None


def test_command_validates_arguments(tmp_path: Path) -> None:
    proc = _py(
        """
        import signal, sys
        sys.argv = [sys.argv[1]]
        import __main__; __main__.__file__ = sys.argv[0]
        import reexec_core
        try:
            reexec_core.command("x")
        except RuntimeError as e:
            assert "init() has not been called" in str(e), e
        else:
            raise SystemExit("command() before init() was accepted")
        assert reexec_core.init() is False
        for bad in [dict(pdeathsig=0), dict(pdeathsig=99), dict(pdeathsig="9")]:
            try:
                reexec_core.command("x", **bad)
            except ValueError:
                pass
            else:
                raise SystemExit(f"accepted {bad}")
        try:
            reexec_core.command("x", 1)
        except TypeError:
            pass
        else:
            raise SystemExit("accepted an int argument")
        c = reexec_core.command("x", "a", pdeathsig=signal.SIGTERM)
        assert c.argv[0] == sys.executable and c.argv[-1] == "a", c.argv
        assert "REEXEC_CORE_ENTRY" not in c.env
        print("ok")
        """,
        str(tmp_path / "fake.py"),
    )
    assert proc.stdout.strip() == "ok", proc.stderr


def test_self_argv_fails_clearly_under_python_c() -> None:
    proc = _py(
        """
        import reexec_core
        try:
            reexec_core.self_argv()
        except RuntimeError as e:
            print("RuntimeError:", e)
        """
    )
    assert "RuntimeError: cannot start this program again" in proc.stdout, proc.stderr


def test_malformed_environment_handover_exits_127(app: App) -> None:
    m = _mode(app, "script")
    proc = subprocess.run(
        [*m.argv, "main-report"],
        env=_env(REEXEC_CORE_ENTRY="garbage"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 127 and "malformed REEXEC_CORE_ENTRY" in proc.stderr


def test_main_that_never_calls_init_is_reported(tmp_path: Path) -> None:
    script = tmp_path / "noinit.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            sys.path.insert(0, REPO)
            import reexec_core
            reexec_core.register("x", lambda: 0)
            if sys.argv[1:] == ["parent"]:
                reexec_core.init()  # only in this branch: the child's main never calls it
                sys.exit(reexec_core.command("x").run().returncode)
            print("main ran without init")
            """
        ).replace("REPO", repr(str(REPO)))
    )
    proc = subprocess.run(
        [sys.executable, str(script), "parent"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 127
    assert "without calling reexec_core.init()" in proc.stderr
