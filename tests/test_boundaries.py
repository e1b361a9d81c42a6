"""The namespace runner's boundaries, attacked by a hostile workload (security issue, 1, 2, 7).

- The workload cannot push input into the caller's terminal (TIOCSTI), through its stdin or
  through ``/dev/tty``, with or without a terminal on stdin (bubblewrap's CVE-2017-5226).
- The workload cannot read the caller's memory or reach the caller's descriptors through
  PID 1 (``/proc/1/mem``, ``/proc/1/fd/N``, ``/proc/1/environ``), on the clone fast path and
  on the fresh-interpreter path of a threaded caller.
- A threaded caller's spec (``env=`` secrets) is not on any command line.

Each attack runs for real, as whichever user runs the suite (root and nobody in ``make test``).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _support_ns import merged_usr_root

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    subprocess.run(["unshare", "-Urpf", "--mount-proc", "true"], capture_output=True).returncode
    != 0,
    reason="this kernel or policy refuses unprivileged user+pid namespaces (unshare -Urpf)",
)

INJECT = textwrap.dedent(
    """
    import fcntl, os, sys, termios
    results = []
    for how in ("stdin", "/dev/tty"):
        try:
            fd = 0 if how == "stdin" else os.open("/dev/tty", os.O_RDWR)
            for c in b"echo INJECTED\\n":
                fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))
            results.append(how + ":injected")
        except OSError as e:
            results.append(how + ":" + (e.strerror or str(e)))
    print(" ".join(results), file=sys.stderr)
    """
)


def _in_a_terminal(
    script: str, timeout: float = 60, press: tuple[Callable[[bytes], bool], bytes] | None = None
) -> tuple[int, bytes]:
    """Run ``script`` (Python) as the session leader of a new pty, as a login shell would be.

    The script runs the workload; afterwards, whatever sits in the terminal's input queue (what
    the caller's shell would read and run next) is printed as ``QUEUE:<repr>``. ``press``:
    (ready, keys): type ``keys`` once ``ready(what the terminal showed)`` is true (polled).
    Returns the exit status and everything the terminal showed.
    """
    epilogue = textwrap.dedent(
        """
        import os as _os, termios as _t
        _a = _t.tcgetattr(0); _a[3] &= ~_t.ICANON; _a[6][_t.VMIN] = 0; _a[6][_t.VTIME] = 0
        _t.tcsetattr(0, _t.TCSANOW, _a)
        _q = b""
        while True:
            _d = _os.read(0, 4096)
            if not _d:
                break
            _q += _d
        print("QUEUE:" + repr(_q), flush=True)
        """
    )
    pid, master = pty.fork()
    if pid == 0:  # the "caller's shell": its controlling terminal is the pty's slave
        try:
            os.execve(
                sys.executable,
                [sys.executable, "-c", script + "\n" + epilogue],
                dict(os.environ, PYTHONPATH=str(REPO)),
            )
        finally:
            os._exit(127)
    out = b""
    over = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if press is not None and press[0](out):
            os.write(master, press[1])
            press = None
        wait = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([master], [], [], wait if press is None else min(wait, 0.02))
        if not ready:
            continue  # the loop's condition ends it at the deadline
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the session is over
            over = True
            break
        if not data:
            over = True
            break
        out += data
    if not over:  # past the deadline: end the session (its QUEUE line is then missing)
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(master)
    return os.waitstatus_to_exitcode(status), out


def _queue(out: bytes) -> str:
    line = next((x for x in out.splitlines() if x.startswith(b"QUEUE:")), None)
    assert line is not None, f"the terminal session did not finish: {out!r}"
    return line.decode()


RUN = "from reexec_core import namespaces; import sys\n"


@pytest.mark.parametrize("stdin", ["terminal", "devnull"])
def test_workload_cannot_inject_into_the_callers_terminal(stdin: str) -> None:
    redirect = ", stdin=open('/dev/null')" if stdin == "devnull" else ""
    script = RUN + (
        f"st = namespaces.run([sys.executable, '-c', {INJECT!r}]{redirect})\n"
        "print('STATUS', st, flush=True)\n"
    )
    status, out = _in_a_terminal(script)
    assert status == 0, out
    assert b"STATUS 0" in out, out
    assert _queue(out) == "QUEUE:b''", f"the workload's input reached the caller: {out!r}"
    if stdin == "devnull":
        # No terminal of its own: neither stdin nor /dev/tty is one it may push input into.
        assert b"injected" not in out.replace(b"INJECTED", b""), out
    # With a terminal on stdin the workload has a pty of its own: what it pushes there is its
    # own input (harmless), and only the queue above, the caller's, matters.


def test_interactive_workload_has_a_terminal_of_its_own() -> None:
    # With a terminal on stdin the workload still gets a terminal (a pty of its own), with the
    # caller's window size, and is the foreground of it; its exit status comes back.
    probe = (
        "import os, fcntl, termios, struct, sys\n"
        "rows, cols = struct.unpack('hhhh', fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)))[:2]\n"
        "print('TTY', os.isatty(0), os.isatty(1), rows, cols,"
        " os.tcgetpgrp(0) == os.getpgrp(), flush=True)\n"
        "sys.exit(7)\n"
    )
    script = (
        "import fcntl, termios, struct\n"
        "fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack('hhhh', 33, 111, 0, 0))\n"
        + RUN
        + f"st = namespaces.run([sys.executable, '-c', {probe!r}])\n"
        "print('STATUS', st, flush=True)\n"
    )
    status, out = _in_a_terminal(script)
    assert status == 0, out
    assert b"TTY True True 33 111 True" in out, out
    assert b"STATUS 7" in out, out
    assert _queue(out) == "QUEUE:b''", out


def test_ctrl_c_at_the_terminal_still_reaches_a_non_interactive_workload() -> None:
    # The workload is in a session of its own, so the terminal signals the runner alone
    # (SI_KERNEL), which must pass it on.
    probe = (
        # The handler writes with os.write and leaves with os._exit: ^C may come while the
        # print below is still flushing, and print inside print is a "reentrant call" error.
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *a: (os.write(1, b'GOT-INT\\n'), os._exit(3)))\n"
        "print('READY', flush=True)\n"
        "time.sleep(60)\n"
        "sys.exit(9)\n"
    )
    script = (
        "import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
        + RUN
        + f"st = namespaces.run([sys.executable, '-c', {probe!r}], stdin=open('/dev/null'))\n"
        "print('STATUS', st, flush=True)\n"
    )
    status, out = _in_a_terminal(script, press=(lambda out: b"READY" in out, b"\x03"))
    assert b"GOT-INT" in out and b"STATUS 3" in out, out


def test_ctrl_c_at_the_terminal_ends_a_non_interactive_shell_and_its_child() -> None:
    # As a terminal would, the signal reaches the workload's whole process group: the shell's
    # `sleep` too, else the shell would wait for it to finish (here: past the session's limit).
    # Pressed once the sleep runs: a shell that takes SIGINT between two commands goes on.
    token = f"0.{int.from_bytes(os.urandom(4), 'big')}"  # a duration: sleep adds them up
    script = (
        "import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
        + RUN
        + f"st = namespaces.run(['sh', '-c', 'sleep 300 {token}; exit 9'],"
        " stdin=open('/dev/null'))\n"
        "print('STATUS', st, flush=True)\n"
    )
    status, out = _in_a_terminal(script, timeout=60, press=(lambda _: _running(token), b"\x03"))
    assert b"STATUS 130" in out, out


def _running(token: str) -> bool:
    """Is a ``sleep 300 TOKEN`` running (the host's view of every PID namespace)?"""
    want = f"sleep\x00300\x00{token}\x00".encode()
    for entry in os.listdir("/proc"):
        try:
            if Path(f"/proc/{entry}/cmdline").read_bytes() == want:
                return True
        except OSError:
            continue
    return False


def test_the_callers_terminal_is_restored_after_an_interactive_run() -> None:
    script = (
        "import termios\nbefore = termios.tcgetattr(0)\n" + RUN + "namespaces.run(['true'])\n"
        "print('SAME', termios.tcgetattr(0) == before, flush=True)\n"
    )
    status, out = _in_a_terminal(script)
    assert status == 0, out
    assert b"SAME True" in out, out


READ_PID1 = textwrap.dedent(
    """
    import json, os, sys
    addr, size, fd = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    seen = {}
    try:
        with open("/proc/1/mem", "rb") as mem:
            mem.seek(addr)
            seen["mem"] = mem.read(size).hex()
    except OSError as e:
        seen["mem"] = "refused: " + e.strerror
    try:
        seen["fd"] = sorted(os.listdir(os.open("/proc/1/fd/%d" % fd, os.O_RDONLY)))[:3]
    except OSError as e:
        seen["fd"] = "refused: " + e.strerror
    try:
        seen["fds"] = sorted(os.listdir("/proc/1/fd"))
    except OSError as e:
        seen["fds"] = "refused: " + e.strerror
    try:
        seen["environ"] = open("/proc/1/environ", "rb").read().decode(errors="replace")
    except OSError as e:
        seen["environ"] = "refused: " + e.strerror
    seen["own_fds"] = sorted(int(x) for x in os.listdir("/proc/self/fd"))
    print(json.dumps(seen))
    """
)

CALLER = textwrap.dedent(
    """
    import ctypes, json, os, sys, threading
    from reexec_core import namespaces
    import reexec_core
    reexec_core.init()
    secret = b"TOKEN-" + os.urandom(16).hex().encode()
    buf = ctypes.create_string_buffer(secret)           # a secret at a known address
    dirfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # a held directory
    os.environ["CALLER_SECRET"] = secret.decode()
    if sys.argv[1] == "threaded":
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    r, w = os.pipe()
    st = namespaces.run(
        [sys.executable, "-c", sys.argv[2], str(ctypes.addressof(buf)), str(len(secret)),
         str(dirfd)],
        stdout=w, env={"PATH": "/usr/bin:/bin", "SPEC_SECRET": secret.decode()},
    )
    os.close(w)
    seen = json.loads(os.read(r, 1 << 20))
    print(json.dumps({"status": st, "secret": secret.hex(), "seen": seen}))
    """
)


@pytest.mark.parametrize("caller", ["single", "threaded"])
def test_workload_cannot_read_pid1_memory_or_descriptors(caller: str, tmp_path: Path) -> None:
    # A script, not `python -c`: a threaded caller starts itself again for the set-up.
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    proc = subprocess.run(
        [sys.executable, str(script), caller, READ_PID1],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    seen = result["seen"]
    assert result["status"] == 0, result
    assert seen["mem"].startswith("refused"), f"read the caller's memory: {seen['mem']}"
    assert result["secret"] not in seen["mem"]
    assert str(seen["fd"]).startswith("refused"), f"opened the caller's directory: {seen['fd']}"
    # PID 1 holds nothing but its stdio (a root caller's workload, owner of a non-dumpable
    # PID 1's /proc entries, may list the numbers; opening any is refused above).
    fds = seen["fds"]
    assert str(fds).startswith("refused") or set(fds) <= {"0", "1", "2"}, f"PID 1 holds {fds}"
    assert str(seen["environ"]).startswith("refused"), seen["environ"]
    # The workload gets its stdio and nothing else (the listing's own fd aside).
    assert len(seen["own_fds"]) <= 4, seen["own_fds"]


def test_threaded_callers_spec_is_on_no_command_line(tmp_path: Path) -> None:
    # A threaded caller starts the setup process as a fresh interpreter; its spec (env=
    # secrets included) must travel through a pipe, not argv, which every user can read.
    script = textwrap.dedent(
        """
        import sys, threading
        from reexec_core import namespaces
        import reexec_core
        reexec_core.init()
        threading.Thread(target=threading.Event().wait, daemon=True).start()
        probe = "import sys, time; print('READY', flush=True); sys.stdin.read()"
        sys.exit(namespaces.run([sys.executable, '-c', probe],
                                env={"PATH": "/usr/bin:/bin", "SPEC_SECRET": "s3cr3t-" + "x" * 8}))
        """
    )
    caller = tmp_path / "caller.py"
    caller.write_text(script)
    proc = subprocess.Popen(
        [sys.executable, str(caller)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"READY\n"
        leaked = []
        for pid in os.listdir("/proc"):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"s3cr3t-" in cmdline:
                leaked.append(cmdline)
        assert not leaked, f"a spec secret is on a command line: {leaked}"
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


# --------------------------------------------------------------------------------------------
# Mount targets under a new root (issue 7): resolved inside it, never on the host.


@pytest.mark.parametrize("outside_exists", [True, False])
def test_bind_under_a_symlink_out_of_the_new_root_lands_inside(
    tmp_path: Path, outside_exists: bool
) -> None:
    outside = tmp_path / "host-dir-outside"
    if outside_exists:
        outside.mkdir()
    root = merged_usr_root(tmp_path)
    (root / "etc").symlink_to(outside)  # absolute: out of the root, as seen from the host
    src = tmp_path / "src"
    src.mkdir()
    (src / "marker").write_text("inside\n")
    # A program of its own: the suite's process may have threads (another test's server),
    # and a threaded caller starts the set-up as a fresh copy of its program.
    script = tmp_path / "run_in_root.py"
    script.write_text(
        "import sys\nfrom reexec_core import namespaces\nimport reexec_core\n"
        "reexec_core.init()\n"
        f"sys.exit(namespaces.run(['/bin/sh', '-c', 'cat /etc/app/marker'], root={str(root)!r},"
        f" mounts=[('ro-bind', '/usr', '/usr'), ('bind', {str(src)!r}, '/etc/app')]))\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "inside\n"  # the mount is where the workload looks
    # Nothing was made on the host: the mount point is the link's target inside the root.
    assert (list(outside.iterdir()) == []) if outside_exists else not outside.exists()
    assert (root / str(outside).lstrip("/") / "app").is_dir()


def test_mount_targets_resolve_inside_the_root_with_and_without_openat2(tmp_path: Path) -> None:
    from reexec_core.namespaces import _mounts
    from reexec_core.namespaces._wire import Failure

    root = tmp_path / "root"
    root.mkdir()
    escape = tmp_path / "escape"
    (root / "abs").symlink_to(escape)  # absolute link out
    (root / "rel").symlink_to("../../escape")  # relative link climbing out
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        for link in ("abs", "rel"):
            fd = _mounts.open_in_root(rootfd, f"/{link}/a/b", "dir", f"{root}/{link}/a/b", "bind")
            os.close(fd)
        assert not escape.exists()
        assert (root / str(escape).lstrip("/") / "a" / "b").is_dir()
        assert (root / "escape" / "a" / "b").is_dir()  # ../../escape, clamped at the root
        # Without openat2 the walk refuses to cross a symlink at all: one sentence, nothing made.
        _mounts.use_openat2 = False
        with pytest.raises(Failure) as info:
            _mounts.open_in_root(rootfd, "/rel/c", "dir", f"{root}/rel/c", "bind")
        assert "/rel is a symlink" in info.value.detail
        fd = _mounts.open_in_root(rootfd, "/plain/d", "file", f"{root}/plain/d", "bind")
        os.close(fd)
        assert (root / "plain" / "d").is_file()
    finally:
        _mounts.use_openat2 = True
        os.close(rootfd)
    assert not escape.exists()


# --------------------------------------------------------------------------------------------
# Without a PID namespace (issue 7): the workload's whole tree ends with the run and the runner.

TREE = textwrap.dedent(
    """
    import sys
    from reexec_core import namespaces
    sys.exit(namespaces.run(["sh", "-c", sys.argv[1]], namespaces=["user", "mount"]))
    """
)


def _gone(pid: int, timeout: float = 30) -> bool:
    """Bounded poll: has ``pid`` exited (gone, or a zombie nobody reaps yet)?"""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def test_without_pid_namespace_sigkill_of_the_runner_kills_the_workloads_children() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", TREE, "sleep 300 & echo $!; wait"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.stdout is not None
    sleeper = int(proc.stdout.readline())  # a host pid: there is no PID namespace
    assert not _gone(sleeper, timeout=0)
    proc.kill()
    proc.wait()
    assert _gone(sleeper), f"the workload's child {sleeper} survived kill -9 of the runner"


def test_without_pid_namespace_what_the_workload_leaves_behind_ends_with_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", TREE, "sleep 300 & echo $!; setsid sleep 301 & echo $!"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.returncode == 0, done.stderr
    for pid in map(int, done.stdout.split()):
        # Killed and reaped before run() returned: no wait needed.
        assert _gone(pid, timeout=0), f"process {pid} outlived the run"
