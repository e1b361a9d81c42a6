"""The namespace runner with real namespaces: isolation, id maps, PID 1, signals, errors.

Every test starts real processes (``nsapp run`` through ``python -m nsapp``, or a small script
on the ``reexec_core.namespaces`` API) and checks from inside *and* from outside. They pass as
root and as an unprivileged user; what the kernel or the privileges forbid is skipped with the
reason, never passed silently.

Whether namespaces can be used here is asked of the kernel (``unshare -Urpf true``), never of
the code under test: a bug in the runner must fail these tests, not skip them. The module is
skipped only where the kernel refuses *and* the runner reports that refusal as a typed
``NamespaceError``; a runner that fails otherwise there fails the collection.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _support_ns import merged_usr_root

REPO = Path(__file__).resolve().parent.parent
ROOT = os.geteuid() == 0
TIMEOUT = 120  # seconds: a hung run fails the test instead of hanging the suite


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def nsapp(*args: str, input: str | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``nsapp ARGS`` (``python -m nsapp``) to completion, capturing its output."""
    done: subprocess.CompletedProcess[str] = subprocess.run(
        [sys.executable, "-m", "nsapp", *args],
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        env=_env(),
        timeout=TIMEOUT,
        **kw,  # type: ignore[call-overload]
    )
    return done


def nsapp_popen(*args: str, **kw: object) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = subprocess.Popen(
        [sys.executable, "-m", "nsapp", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        **kw,  # type: ignore[call-overload]
    )
    # A watchdog: if forwarding or the workload broke, a readline() would wait forever.
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    return proc


def script(
    tmp_path: Path,
    code: str,
    *args: str,
    python: str | None = None,
    prefix: list[str] | None = None,
    pythonpath: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a Python script (a file, so it can start itself again) using the API."""
    path = tmp_path / f"s{uuid.uuid4().hex[:8]}.py"
    path.write_text(textwrap.dedent(code))
    path.chmod(0o644)
    env = _env() if pythonpath is None else _env(PYTHONPATH=str(pythonpath))
    return subprocess.run(
        [*(prefix or []), python or sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory the unprivileged user can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ns-test-", dir="/tmp"))
    path.chmod(0o755)
    # The checkout may be unreadable for that user (under /root): give it its own copy.
    shutil.copytree(
        REPO / "reexec_core",
        path / "lib" / "reexec_core",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for p in [path / "lib", *(path / "lib").rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# The kernel probe where unshare(1) is missing: the standard library's ctypes, not our code.
_CTYPES_PROBE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000 | 0x20000000) != 0:  # CLONE_NEWUSER | CLONE_NEWPID
    sys.exit(os.strerror(ctypes.get_errno()))
pid = os.fork()
if pid == 0:
    os._exit(0)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def kernel_refusal() -> str | None:
    """Ask the kernel (not the code under test) whether this user may create user and PID
    namespaces; return its refusal, or None when it may."""
    unshare = shutil.which("unshare")
    argv = [unshare, "-Urpf", "true"] if unshare else [sys.executable, "-c", _CTYPES_PROBE]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    if done.returncode == 0:
        return None
    return done.stderr.strip() or f"{argv[0]} exited with {done.returncode}"


def _typed_refusal(kernel: str) -> str:
    """The kernel refuses: the runner must say so with a typed error, else collection fails."""
    code = (
        "from reexec_core import namespaces as n\n"
        "try:\n"
        "    status = n.run(['true'], namespaces='user,pid')\n"
        "except n.NamespaceError as e:\n"
        "    print(type(e).__name__, e)\n"
        "else:\n"
        "    print('ran', status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=TIMEOUT
    )
    out = done.stdout.strip()
    if done.returncode != 0 or not out or out.startswith("ran"):
        raise AssertionError(
            f"the kernel refuses namespaces here ({kernel}), but the runner did not report "
            f"a typed NamespaceError: {out or done.stderr.strip()}"
        )
    return out


_KERNEL_REFUSAL = kernel_refusal()
_REFUSAL = None if _KERNEL_REFUSAL is None else _typed_refusal(_KERNEL_REFUSAL)
pytestmark = pytest.mark.skipif(
    _REFUSAL is not None,
    reason=f"the kernel refuses namespaces to this user ({_KERNEL_REFUSAL}): {_REFUSAL}",
)


def _workload_pid(token: str, timeout: float = 30) -> int:
    """Find the host pid of the workload ``python -c CODE TOKEN`` (not the runner's forks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[:-1]
            except OSError:
                continue
            if len(argv) >= 3 and argv[1] == b"-c" and argv[-1] == token.encode():
                return int(entry)
        time.sleep(0.02)
    raise AssertionError(f"workload {token} never appeared")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _descends_from(pid: int, ancestor: int) -> bool:
    """Is ``ancestor`` among the parents of ``pid`` (host pids, read from /proc)?"""
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return False
        if pid == ancestor:
            return True
    return False


def _wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


SLEEPER = "import sys,time; print('ready', flush=True); time.sleep(120)"


# ------------------------------------------------------------------------------------ PID 1


def test_workload_runs_under_our_pid1_and_host_pids_are_invisible() -> None:
    done = nsapp("run", "--", "sh", "-c", "echo $$; cat /proc/1/comm; ls /proc")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[0] == "2"  # the workload; PID 1 is the namespace's init
    assert lines[1] == "ns-init"
    pids = {int(x) for x in lines[2:] if x.isdigit()}
    assert 1 in pids and 2 in pids
    assert max(pids) < 10, pids  # only the namespace's own few processes
    assert os.getpid() not in pids or os.getpid() < 10


def test_pid1_is_ours_even_without_a_user_namespace_as_root() -> None:
    if not ROOT:
        pytest.skip("pid+mount without a user namespace needs CAP_SYS_ADMIN (root)")
    done = nsapp("run", "--ns", "pid,mount", "--", "sh", "-c", "echo $$; cat /proc/1/comm")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "ns-init"]


# -------------------------------------------------------------------------------- id maps


def test_map_root_inside_and_the_map_outside() -> None:
    token = uuid.uuid4().hex
    code = "import os,sys,time; print(os.getuid(), os.getgid(), flush=True); time.sleep(120)"
    proc = nsapp_popen("run", "--", sys.executable, "-c", code, token)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["0", "0"]
        pid = _workload_pid(token)
        # Read from outside: the outer column is in our (the parent's) user namespace.
        assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", str(os.geteuid()), "1"]
        assert Path(f"/proc/{pid}/gid_map").read_text().split() == ["0", str(os.getegid()), "1"]
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = next(x for x in status.splitlines() if x.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(os.geteuid())] * 4
    finally:
        proc.kill()
        proc.wait()


def test_map_current_keeps_our_ids_inside() -> None:
    uid, gid = os.geteuid(), os.getegid()
    done = nsapp("run", "--map-current", "--", "sh", "-c", "id -u; id -g; cat /proc/self/uid_map")
    assert done.returncode == 0, done.stderr
    out = done.stdout.split()
    assert out[:2] == [str(uid), str(gid)]
    assert out[2:] == [str(uid), str(uid), "1"]


def test_full_subid_ranges_through_newuidmap(public_dir: Path) -> None:
    tmp_path = public_dir
    if not ROOT:
        pytest.skip("needs root to give the unprivileged user a /etc/subuid range for the test")
    for tool in ("newuidmap", "newgidmap", "setpriv", "unshare"):
        if not any(Path(d, tool).exists() for d in os.environ.get("PATH", "").split(":")):
            pytest.skip(f"{tool} is not installed (apt-get install uidmap util-linux)")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 for the unprivileged user to run")
    (tmp_path / "subuid").write_text("nobody:100000:65536\n")
    (tmp_path / "subgid").write_text("nogroup:100000:65536\nnobody:100000:65536\n")
    code = tmp_path / "s.py"
    code.write_text(
        "from reexec_core import namespaces as n\n"
        "raise SystemExit(n.run(['sh','-c','id -u; cat /proc/self/uid_map /proc/self/gid_map'],"
        " subids=True))\n"
    )
    tmp_path.chmod(0o755)
    code.chmod(0o644)
    # A private mount namespace in which /etc/subuid grants nobody a range; newuidmap (setuid
    # root) reads it there. Then the unprivileged user asks for the full range.
    shell = (
        f"mount --bind {tmp_path}/subuid /etc/subuid && "
        f"mount --bind {tmp_path}/subgid /etc/subgid && "
        "exec setpriv --reuid 65534 --regid 65534 --clear-groups "
        f"/usr/bin/python3 {code}"
    )
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", shell],
        capture_output=True,
        text=True,
        env=_env(PYTHONPATH=str(tmp_path / "lib")),
        timeout=TIMEOUT,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.split()
    assert out[0] == "0"
    assert out[1:7] == ["0", "65534", "1", "1", "100000", "65536"]
    assert out[7:10] == ["0", "65534", "1"]
    assert out[10:13] == ["1", "100000", "65536"]


# ------------------------------------------------------------------------------- isolation


def test_hostname_changes_stay_inside() -> None:
    before = socket.gethostname()
    done = nsapp(
        "run", "--hostname", "box", "--", "sh", "-c", "hostname; hostname changed-inside; hostname"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["box", "changed-inside"]
    assert socket.gethostname() == before


def test_only_lo_and_it_is_up() -> None:
    code = textwrap.dedent("""
        import fcntl, socket
        names = [l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        req = bytearray(b'lo'.ljust(40, b'\\0'))
        fcntl.ioctl(s.fileno(), 0x8913, req)
        up = bool(int.from_bytes(req[16:18], 'little') & 1)
        srv = socket.create_server(('127.0.0.1', 0))
        c = socket.create_connection(srv.getsockname(), timeout=5)
        print(','.join(names), up, 'connected')
    """)
    done = nsapp("run", "--", sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["lo", "True", "connected"]


def test_tmpfs_inside_is_invisible_outside(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = nsapp(
        "run",
        "--tmpfs",
        str(mnt),
        "--",
        "sh",
        "-c",
        f"echo secret > {mnt}/f && cat {mnt}/f && grep -c ' {mnt} ' /proc/self/mountinfo",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["secret", "1"]
    assert list(mnt.iterdir()) == []
    assert str(mnt) not in Path("/proc/self/mountinfo").read_text()


SHARED_ROOT = """
import json, os, sys
from reexec_core import namespaces as n

target = sys.argv[1]


def mounts():
    return [line.split() for line in open("/proc/self/mountinfo")]


def propagation(fields):  # the optional fields: shared:N, master:N, ... (none: private)
    return fields[6 : fields.index("-")]


outer = [propagation(f) for f in mounts() if f[4] == "/"]
script = 'mount -t tmpfs tmpfs "$1" && cat /proc/self/mountinfo'
r, w = os.pipe()
status = n.run(["sh", "-c", script, "sh", target], namespaces="mount", stdout=w)
os.close(w)
inside = [line.split() for line in open(r, encoding="utf-8").read().splitlines()]
print(json.dumps({
    "outer_root": outer,
    "status": status,
    "inside_tags": sorted({t for f in inside for t in propagation(f)}),
    "leaked": any(f[4] == target for f in mounts()),
}))
"""


def test_mounts_inside_do_not_propagate_out_even_when_root_is_shared(tmp_path: Path) -> None:
    """Where ``/`` is a shared mount (systemd makes it so), the new mount namespace starts as
    its peer: without making every mount private first, a mount inside shows up outside.

    The host's own ``/`` may already be private, so the test makes the situation itself: an
    outer user + mount namespace (``unshare -Urm --propagation shared``, root there) whose
    ``/`` is shared, and a run with a mount namespace only (a new user namespace would turn
    the copies into slaves and hide the bug).
    """
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) (util-linux) is not installed")
    target = tmp_path / "mnt"
    target.mkdir()
    done = subprocess.run(
        [
            "unshare",
            "-Urm",
            "--propagation",
            "shared",
            sys.executable,
            "-c",
            SHARED_ROOT,
            str(target),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert any(t.startswith("shared:") for tags in got["outer_root"] for t in tags), got
    assert got["status"] == 0, done.stderr
    assert got["inside_tags"] == [], got  # every mount inside is private
    assert got["leaked"] is False, "the tmpfs mounted inside appeared outside"


def test_ro_bind_is_read_only_and_bind_is_writable(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "data").write_text("hello\n")
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    done = nsapp(
        "run",
        "--ro-bind",
        f"{src}:{ro}",
        "--bind",
        f"{src}:{rw}",
        "--",
        "sh",
        "-c",
        f"cat {ro}/data; touch {ro}/x 2>/dev/null && echo ro-writable; touch {rw}/y && echo rw-ok",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hello", "rw-ok"]
    assert (src / "y").exists() and not (src / "x").exists()


def test_missing_mount_point_is_an_error_and_nothing_is_made_on_the_host(
    tmp_path: Path,
) -> None:
    target = tmp_path / "no" / "such"
    done = nsapp("run", "--tmpfs", str(target), "--", "true")
    assert done.returncode == 125
    assert "mount point does not exist" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "no").exists()


def test_new_root_with_pivot_root(tmp_path: Path) -> None:
    root = merged_usr_root(tmp_path)
    done = nsapp(
        "run",
        "--root",
        str(root),
        "--ro-bind",
        "/usr:/usr",
        "--",
        "/bin/sh",
        "-c",
        "ls /; cat /proc/1/comm",
    )
    assert done.returncode == 0, done.stderr
    listing = done.stdout.split()
    assert listing[-1] == "ns-init"
    assert "usr" in listing and "proc" in listing
    assert "etc" not in listing and "root" not in listing  # the host's root is gone


def test_ipc_objects_do_not_cross() -> None:
    if not all(Path("/usr/bin", t).exists() for t in ("ipcmk", "ipcrm")):
        pytest.skip("ipcmk/ipcrm (util-linux) not installed")
    made = subprocess.run(["ipcmk", "-M", "4096"], capture_output=True, text=True, check=True)
    shmid = made.stdout.split()[-1]
    try:
        done = nsapp(
            "run",
            "--",
            "sh",
            "-c",
            "cat /proc/sysvipc/shm | wc -l; ipcmk -M 4096 >/dev/null; "
            "cat /proc/sysvipc/shm | wc -l",
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["1", "2"]  # header only, then our own segment
        outside = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
        ids = {line.split()[1] for line in outside}
        assert ids == {shmid} or shmid in ids
        # The segment made inside died with its namespace; ours is still there and only ours.
        assert len([i for i in ids if i == shmid]) == 1
    finally:
        subprocess.run(["ipcrm", "-m", shmid], check=False)


# ------------------------------------------------------------------- exit status, signals


def test_every_exit_status_and_signal_death_arrives(tmp_path: Path) -> None:
    done = script(
        tmp_path,
        """
        from reexec_core import namespaces as n
        got = [n.run(["sh", "-c", f"exit {i}"], namespaces="user,pid,mount")
               for i in range(256)]
        sigs = [1, 2, 3, 6, 9, 10, 12, 13, 14, 15]
        died = [n.run(["sh", "-c", f"kill -{s} $$"], namespaces="user,pid,mount") for s in sigs]
        nopid = [n.run(["sh", "-c", f"kill -{s} $$"], namespaces="user,net") for s in sigs]
        print(got == list(range(256)), died, nopid)
    """,
    )
    assert done.returncode == 0, done.stderr
    expected = [128 + s for s in (1, 2, 3, 6, 9, 10, 12, 13, 14, 15)]
    assert done.stdout.strip() == f"True {expected} {expected}"
    for status in (0, 1, 77, 255):
        assert nsapp("run", "--", "sh", "-c", f"exit {status}").returncode == status
    assert nsapp("run", "--", "sh", "-c", "kill -9 $$").returncode == 137


def test_status_arrives_when_the_caller_ignores_sigchld(tmp_path: Path) -> None:
    """With SIGCHLD ignored the kernel would reap the child itself and lose its status."""
    done = script(
        tmp_path,
        """
        import signal
        from reexec_core import namespaces as n
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        print(n.run(["sh", "-c", "exit 5"]), n.run(["sh", "-c", "exit 6"], namespaces="user"),
              signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN)
        """,
    )
    assert done.stdout.split() == ["5", "6", "True"], done.stderr


def test_signals_to_the_runner_reach_the_workload_handler() -> None:
    token = uuid.uuid4().hex
    code = textwrap.dedent("""
        import os, signal, sys, time
        def on(sig, frame):   # os.write: print() in a signal handler may re-enter stdout
            os.write(1, f'got {signal.Signals(sig).name}\\n'.encode())
            if sig == signal.SIGTERM:
                os._exit(42)
        for s in ('HUP','INT','QUIT','USR1','USR2','WINCH','TERM'):
            signal.signal(getattr(signal, 'SIG' + s), on)
        os.write(1, b'ready\\n')
        while True:
            time.sleep(1)
    """)
    proc = nsapp_popen("run", "--", sys.executable, "-c", code, token)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    names = ["HUP", "INT", "QUIT", "USR1", "USR2", "WINCH", "TERM"]
    seen = []
    for name in names:
        proc.send_signal(getattr(signal, "SIG" + name))
        seen.append(proc.stdout.readline().strip())
    status = proc.wait(timeout=TIMEOUT)
    assert proc.stderr is not None
    assert (status, seen) == (42, [f"got SIG{n}" for n in names]), proc.stderr.read()


def test_sigterm_kills_a_workload_without_handler_pid1_does_not_ignore_it() -> None:
    token = uuid.uuid4().hex
    proc = nsapp_popen("run", "--", sys.executable, "-c", SLEEPER, token)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 128 + signal.SIGTERM


def test_200_orphaned_grandchildren_leave_no_zombies() -> None:
    code = textwrap.dedent("""
        import os, time
        me = os.getpid()
        r, w = os.pipe()
        for _ in range(200):
            if os.fork() == 0:
                if os.fork() == 0:      # the grandchild outlives its parent: an orphan
                    os.close(w)
                    os.read(r, 1)       # until the workload closes the pipe
                    os._exit(0)
                os._exit(0)
        for _ in range(200):
            os.wait()
        def others():
            found = []
            for p in os.listdir('/proc'):
                if p.isdigit() and int(p) not in (1, me):
                    try:
                        fields = open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()
                    except OSError:
                        continue
                    found.append((fields[0], fields[1]))   # state, ppid
            return found
        orphans = sum(1 for state, ppid in others() if ppid == '1')  # adopted by PID 1
        os.close(w)             # now they all exit, as children of PID 1, which reaps them
        deadline = time.monotonic() + 30
        while others() and time.monotonic() < deadline:
            time.sleep(0.01)
        left = others()
        print(orphans, sum(1 for state, _ in left if state == 'Z'), len(left))
    """)
    done = nsapp("run", "--", sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    orphans, zombies, left = map(int, done.stdout.split())
    assert orphans == 200  # all really were orphaned, adopted by our PID 1
    assert (zombies, left) == (0, 0)  # all reaped within 30 s


@pytest.mark.parametrize("ns", ["user,pid,mount,net", "user,net"])
def test_sigkill_to_the_runner_kills_the_workload(ns: str) -> None:
    token = uuid.uuid4().hex
    proc = nsapp_popen("run", "--ns", ns, "--", sys.executable, "-c", SLEEPER, token)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    pid = _workload_pid(token)
    proc.kill()
    proc.wait()
    assert _wait_gone(pid), f"workload {pid} survived SIGKILL of its runner"


def test_terminal_passes_through() -> None:
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nsapp",
                "run",
                "--",
                "sh",
                "-c",
                "test -t 0 && test -t 1 && echo tty-ok",
            ],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=_env(),
        )
        os.close(slave)
        assert proc.wait(timeout=TIMEOUT) == 0
        out = b""
        while True:
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if b"tty-ok" in out:
                break
        assert b"tty-ok" in out
    finally:
        os.close(master)


def test_shell_is_root_in_all_namespaces_with_the_prompt() -> None:
    done = nsapp("shell", input="id -u; echo $$; exit 5\n")
    assert done.returncode == 5, done.stderr
    assert done.stdout.split() == ["0", "2"]
    assert "-[ns-process]- # " in done.stderr


def test_interactive_shell_on_a_terminal_keeps_job_control_and_exit_status() -> None:
    """On a terminal the workload gets a pty of its own, relayed: Ctrl-C (a byte, the caller's
    terminal is raw) interrupts the command, not the shell, and the shell's exit status
    arrives."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs
        os.environ.update(_env())
        os.execv(sys.executable, [sys.executable, "-m", "nsapp", "shell"])
    out = b""

    def read_until(marker: bytes) -> None:
        nonlocal out
        deadline = time.monotonic() + 30
        while marker not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    return
                if not chunk:
                    return
                out += chunk

    def sleep_in_foreground() -> bool:
        """Is ``sleep 60``, a descendant of ours, the foreground process group of its terminal
        (the workload's own pty, which the runner relays to ours)?"""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for entry in os.listdir("/proc"):
                try:
                    argv = Path(f"/proc/{entry}/cmdline").read_bytes()
                    stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, ValueError):
                    continue
                # stat fields after the name: state ppid pgrp session tty_nr tpgid
                if argv == b"sleep\x0060\x00" and int(stat[2]) == int(stat[5]):
                    if _descends_from(int(entry), pid):
                        return True
            time.sleep(0.02)
        return False

    try:
        read_until(b"-[ns-process]- # ")
        os.write(fd, b"echo pid=$$ uid=$(id -u); sleep 60\n")
        read_until(b"uid=0")
        # Ctrl-C only once the shell has handed the terminal to sleep: before that, the
        # shell at its prompt takes it and sleep runs its full 60 s.
        assert sleep_in_foreground(), out
        os.write(fd, b"\x03")  # Ctrl-C: the terminal signals the foreground group
        os.write(fd, b"echo still-here\n")
        read_until(b"still-here\r\n")
        os.write(fd, b"exit 4\n")
        read_until(b"never")
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert "pid=2 uid=0" in text
    assert "still-here\r\n" in text
    assert os.waitstatus_to_exitcode(status) == 4, text


def test_run_from_the_single_file_build(build_pyz: Callable[..., Path]) -> None:
    """The .pyz runs it the same way (its interpreter clones itself, no new interpreter)."""
    pyz = build_pyz("1.0.0")
    done = subprocess.run(
        [
            sys.executable,
            str(pyz),
            "run",
            "--hostname",
            "pyz",
            "--",
            "sh",
            "-c",
            "echo $$ $(id -u) $(hostname) $(cat /proc/1/comm); exit 3",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.split() == ["2", "0", "pyz", "ns-init"]


def test_command_not_found_is_127_with_one_sentence() -> None:
    done = nsapp("run", "--", "no-such-command-xyz")
    assert done.returncode == 127
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "command not found" in done.stderr


def test_a_setup_step_failing_while_the_runner_writes_the_maps_is_reported(
    tmp_path: Path,
) -> None:
    """The clone child goes on after asking for its id maps: a step that fails then (and the
    child's exit) must surface as that step's error, never as a map or broken-pipe error."""
    done = script(
        tmp_path,
        """
        import collections
        from reexec_core import namespaces
        from reexec_core.namespaces import _linux

        def refuse():
            raise OSError(1, "Operation not permitted")

        _linux.set_loopback_up = refuse  # the clone child is a copy: it fails there
        seen = collections.Counter()
        for _ in range(20):
            try:
                namespaces.run(["true"], namespaces="user,net")
            except namespaces.NamespaceSetupError as e:
                seen[str(e)] += 1
        print(dict(seen))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'cannot loopback lo up: Operation not permitted': 20}"


# ---------------------------------------------- the libc path (3.11) and os.unshare (3.12+)

# Python 3.12+ calls os.unshare/os.setns where 3.11 calls libc through _ctypes: run the same
# three calls both ways. "libc" forces the _ctypes path (and makes os.unshare/os.setns fail
# loudly if anything still called them); "os" records that Python's own functions were used.
# clone3 is hidden so that run() takes fork + unshare + fork, where unshare is called.
BOTH_PATHS = """
import errno, json, os, socket, sys
from reexec_core import namespaces as n
from reexec_core.namespaces import _linux

path, marker = sys.argv[1], sys.argv[2]
if path == "libc":
    def refuse(*args):
        raise AssertionError("os.unshare/os.setns called on the libc path")
    _linux._os_unshare = _linux._os_setns = None
    os.unshare = os.setns = refuse
else:
    def recorded(name, fn):
        def call(*args):
            with open(marker, "a") as f:
                f.write(name + "\\n")
            return fn(*args)
        return call
    _linux._os_unshare = recorded("unshare", os.unshare)
    _linux._os_setns = recorded("setns", os.setns)


def no_clone3(flags):
    raise OSError(errno.ENOSYS, "hidden by the test")


_linux.clone3 = no_clone3
out = {}
r, w = os.pipe()
out["run"] = n.run(["sh", "-c", "echo $$ $(id -u); exit 3"], namespaces="user,pid,mount",
                   stdout=w)
os.close(w)
out["run_output"] = os.read(r, 100).decode().split()

# unshare(): a child moves itself into new user and uts namespaces, then waits to be joined.
ready_r, ready_w = os.pipe()
hold_r, hold_w = os.pipe()
target = os.fork()
if target == 0:
    try:
        before = os.stat("/proc/self/ns/user").st_ino
        uid, gid = os.getuid(), os.getgid()
        n.unshare("user,uts")
        _linux.write_id_maps("self", [(0, uid, 1)], [(0, gid, 1)], True)
        socket.sethostname("joined")
        moved = os.stat("/proc/self/ns/user").st_ino != before
        os.write(ready_w, b"1" if moved else b"0")
        os.read(hold_r, 1)
    finally:
        os._exit(0)
os.close(ready_w)
os.close(hold_r)
out["unshare_moved"] = os.read(ready_r, 1) == b"1"
r, w = os.pipe()
out["join"] = n.join(target, ["sh", "-c", "hostname; id -u"], stdout=w)
os.close(w)
out["join_output"] = os.read(r, 100).decode().split()
os.write(hold_w, b"x")
os.waitpid(target, 0)
print(json.dumps(out))
"""


@pytest.mark.parametrize("path", ["libc", "os"])
def test_unshare_and_setns_work_through_libc_and_through_os(tmp_path: Path, path: str) -> None:
    if path == "os" and not hasattr(os, "unshare"):
        pytest.skip(f"Python {sys.version.split()[0]} has no os.unshare (3.12+): libc only")
    marker = tmp_path / "called"
    done = script(tmp_path, BOTH_PATHS, path, str(marker))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    assert got == {
        "run": 3,
        "run_output": ["2", "0"],
        "unshare_moved": True,
        "join": 0,
        "join_output": ["joined", "0"],
    }, done.stderr
    called = marker.read_text().split() if marker.exists() else []
    if path == "os":
        assert sorted(set(called)) == ["setns", "unshare"], called
    else:
        assert called == []


# ------------------------------------------------------------------------------ join/entry

ENTRY_APP = """
import os, socket, sys, threading, time
import reexec_core
from reexec_core import namespaces

def probe(*args):
    print(os.getpid(), os.getuid(), socket.gethostname(), repr(args), flush=True)
    return 7

reexec_core.register("probe", probe)

if __name__ == "__main__":
    if reexec_core.init():
        raise SystemExit(0)
    mode = sys.argv[1]
    if mode == "entry":
        rc = namespaces.run_entry("probe", "a b", "ü", hostname="ent")
    elif mode == "threaded":
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        rc = namespaces.run(["sh", "-c", "echo $$; hostname"], hostname="thr")
        rc2 = namespaces.run_entry("probe", "x", hostname="thr2")
        rc = rc * 1000 + rc2
    elif mode == "join":
        rc = namespaces.join(int(sys.argv[2]), ["sh", "-c", "hostname; cat " + sys.argv[3] +
                             "; id -u; echo $$"])
    elif mode == "join-pidfd":
        fd = os.pidfd_open(int(sys.argv[2]))
        rc = namespaces.join(pidfd=fd, entry="probe", entry_args=["j"])
    print("rc", rc, flush=True)
"""


def test_run_entry_runs_a_registered_entry_point_inside(tmp_path: Path) -> None:
    done = script(tmp_path, ENTRY_APP, "entry")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["2 0 ent ('a b', 'ü')", "rc 7"]


def test_threaded_caller_gets_a_fresh_setup_process(tmp_path: Path) -> None:
    done = script(tmp_path, ENTRY_APP, "threaded")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["2", "thr", "2 0 thr2 ('x',)", "rc 7"]


def test_join_sees_the_hostname_and_the_mounts(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    token = uuid.uuid4().hex
    code = f"open('{mnt}/marker','w').write('inside-tmpfs\\n'); " + SLEEPER
    proc = nsapp_popen(
        "run", "--hostname", "joinme", "--tmpfs", str(mnt), "--", sys.executable, "-c", code, token
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        pid = _workload_pid(token)
        done = script(tmp_path, ENTRY_APP, "join", str(pid), f"{mnt}/marker")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[:3] == ["joinme", "inside-tmpfs", "0"]
        assert int(lines[3]) > 2  # a new process in the sandbox's PID namespace
        assert lines[4] == "rc 0"
        done = script(tmp_path, ENTRY_APP, "join-pidfd", str(pid))
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0].split()[1:3] == ["0", "joinme"]
        assert done.stdout.splitlines()[1] == "rc 7"
    finally:
        proc.kill()
        proc.wait()
    assert not (mnt / "marker").exists()


# ---------------------------------------------------------------------------- refusals


def test_max_user_namespaces_zero_gives_the_sysctl_message(tmp_path: Path) -> None:
    """ENOSPC, provoked for real: limit 0 in a nested user namespace we own."""
    inner = (
        "echo 0 > /proc/sys/user/max_user_namespaces && "
        f"exec {sys.executable} -m nsapp run --ns user,pid -- true"
    )
    done = subprocess.run(
        ["unshare", "-Ur", "sh", "-c", inner],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=TIMEOUT,
    )
    if "unshare failed" in done.stderr or "unshare:" in done.stderr:
        pytest.skip(f"unshare(1) cannot nest a user namespace here: {done.stderr.strip()}")
    assert done.returncode == 125
    assert "user.max_user_namespaces" in done.stderr and "is 0" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    # The API raises the typed leaf.
    api = (
        "from reexec_core import namespaces as n\n"
        "try:\n n.run(['true'], namespaces='user')\n"
        "except n.NamespaceLimitError as e:\n print('limit', e.errno)\n"
    )
    done = subprocess.run(
        [
            "unshare",
            "-Ur",
            "sh",
            "-c",
            f'echo 0 > /proc/sys/user/max_user_namespaces && exec {sys.executable} -c "$0"',
            api,
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=TIMEOUT,
    )
    assert done.stdout.split() == ["limit", "28"], done.stderr


SECCOMP = """
import ctypes, os, struct, sys
# A seccomp filter like a container's default profile.
def ins(code, jt, jf, k):
    return struct.pack('HBBI', code, jt, jf, k)
# Docker's profile does the same: clone3 -> ENOSYS (its flags sit in memory, out of the
# filter's reach, so glibc falls back), unshare/clone with CLONE_NEWUSER -> EPERM.
prog = b''.join([
    ins(0x20, 0, 0, 4),                 # 0 ld arch
    ins(0x15, 0, 6, 0xc000003e),        # 1 x86_64? else allow
    ins(0x20, 0, 0, 0),                 # 2 ld nr
    ins(0x15, 5, 0, 435),               # 3 clone3? -> ENOSYS
    ins(0x15, 0, 3, 272),               # 4 unshare? else allow
    ins(0x20, 0, 0, 16),                # 5 ld args[0] (low half)
    ins(0x45, 0, 1, 0x10000000),        # 6 CLONE_NEWUSER set? else allow
    ins(0x06, 0, 0, 0x00050000 | 1),    # 7 ret ERRNO(EPERM)
    ins(0x06, 0, 0, 0x7fff0000),        # 8 ret ALLOW
    ins(0x06, 0, 0, 0x00050000 | 38),   # 9 ret ERRNO(ENOSYS)
])
if os.environ.pop("NS_TEST_ONLY_CLONE3", None):
    # Only hide clone3: the runner must fall back to fork + unshare + fork and still work.
    prog = b''.join([
        ins(0x20, 0, 0, 4), ins(0x15, 0, 2, 0xc000003e), ins(0x20, 0, 0, 0),
        ins(0x15, 1, 0, 435), ins(0x06, 0, 0, 0x7fff0000), ins(0x06, 0, 0, 0x00050000 | 38),
    ])
buf = ctypes.create_string_buffer(prog)
fprog = struct.pack('HxxxxxxQ', len(prog) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
ul = ctypes.c_ulong
assert libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) == 0  # PR_SET_NO_NEW_PRIVS
fbuf = ctypes.create_string_buffer(fprog)
assert libc.prctl(22, ctypes.c_ulong(2), ctypes.c_void_p(ctypes.addressof(fbuf)),
                  ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0  # PR_SET_SECCOMP, FILTER
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _seccomp(
    tmp_path: Path,
    *args: str,
    only_clone3: bool = False,
) -> subprocess.CompletedProcess[str]:
    if os.uname().machine != "x86_64":
        pytest.skip("the test's seccomp filter is written for x86_64")
    if only_clone3:
        os.environ["NS_TEST_ONLY_CLONE3"] = "1"
    try:
        return script(tmp_path, SECCOMP, *args)
    finally:
        os.environ.pop("NS_TEST_ONLY_CLONE3", None)


def test_without_clone3_the_fork_unshare_fork_path_does_the_same(tmp_path: Path) -> None:
    """Docker's default seccomp profile hides clone3: PID 1, maps and hostname still right."""
    done = _seccomp(
        tmp_path,
        "-m",
        "nsapp",
        "run",
        "--hostname",
        "fb",
        "--",
        "sh",
        "-c",
        "echo $$; id -u; hostname; cat /proc/1/comm; exit 9",
        only_clone3=True,
    )
    assert done.returncode == 9, done.stderr
    assert done.stdout.split() == ["2", "0", "fb", "ns-init"]
    done = _seccomp(
        tmp_path,
        "-m",
        "nsapp",
        "run",
        "--ns",
        "user,net",
        "--",
        "sh",
        "-c",
        "kill -TERM $$",
        only_clone3=True,
    )
    assert done.returncode == 128 + signal.SIGTERM, done.stderr


def test_seccomp_refusal_names_seccomp_and_named_namespace_is_never_dropped(
    tmp_path: Path,
) -> None:
    done = _seccomp(tmp_path, "-m", "nsapp", "run", "--ns", "user,pid", "--", "true")
    assert done.returncode == 125, done.stderr
    assert "seccomp" in done.stderr and "user" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_default_namespaces_are_all_the_caller_can_create(tmp_path: Path) -> None:
    """With user namespaces blocked, root still gets the others; anyone else gets the error."""
    done = _seccomp(
        tmp_path, "-m", "nsapp", "run", "--", "sh", "-c", "echo $$; id -u; cat /proc/self/uid_map"
    )
    if ROOT:
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["2", "0", "0", "0", "4294967295"]
    else:
        assert done.returncode == 125
        assert "seccomp" in done.stderr


def test_without_user_namespace_an_unprivileged_caller_is_told_about_cap_sys_admin(
    tmp_path: Path,
    public_dir: Path,
) -> None:
    code = """
        from reexec_core import namespaces as n
        try:
            n.run(['true'], namespaces='net')
        except n.NamespacePermissionError as e:
            print(e)
    """
    if ROOT:
        if not Path("/usr/bin/python3").exists() or not Path("/usr/bin/setpriv").exists():
            pytest.skip("needs /usr/bin/python3 and setpriv to drop to an unprivileged user")
        done = script(
            public_dir,
            code,
            python="/usr/bin/python3",
            prefix=["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"],
            pythonpath=public_dir / "lib",
        )
    else:
        done = script(tmp_path, code)
    assert "CAP_SYS_ADMIN" in done.stdout and "add 'user'" in done.stdout, done.stderr


def test_threaded_caller_unsharing_itself_gets_the_einval_message(tmp_path: Path) -> None:
    done = script(
        tmp_path,
        """
        import threading, time
        from reexec_core import namespaces as n
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        try:
            n.unshare("user")
        except n.ThreadedCallerError as e:
            print(e.errno, e)
    """,
    )
    assert done.stdout.startswith("22 "), done.stderr
    assert "more than one thread" in done.stdout


def test_missing_namespace_type_names_the_kernel_option() -> None:
    entries = {
        "user": "user",
        "pid": "pid",
        "mount": "mnt",
        "net": "net",
        "uts": "uts",
        "ipc": "ipc",
        "cgroup": "cgroup",
        "time": "time",
    }
    present = set(os.listdir("/proc/self/ns"))
    missing = [name for name, entry in entries.items() if entry not in present]
    if not missing:
        pytest.skip("this kernel has every namespace type; the refusal cannot be provoked")
    done = nsapp("run", "--ns", missing[0], "--", "true")
    assert done.returncode == 125
    assert f"CONFIG_{missing[0].upper()}_NS" in done.stderr


@pytest.mark.parametrize(
    ("knob", "blocking"),
    [
        ("kernel/apparmor_restrict_unprivileged_userns", "1"),
        ("kernel/unprivileged_userns_clone", "0"),
    ],
)
def test_userns_policy_sysctl_is_named(knob: str, blocking: str) -> None:
    """Where the kernel has the knob and it blocks us, the message names it."""
    path = Path("/proc/sys") / knob
    if not path.exists():
        pytest.skip(f"this kernel has no {knob.replace('/', '.')} sysctl to provoke")
    if path.read_text().strip() != blocking or ROOT:
        pytest.skip(f"{knob.replace('/', '.')} does not block this user here")
    done = nsapp("run", "--ns", "user", "--", "true")
    assert done.returncode == 125
    assert knob.replace("/", ".") in done.stderr
