"""The sandbox options of the namespace runner, with the real kernel features (issue 16).

Resource limits (rlimits everywhere; cgroups v1 as root, v2 where delegated), capabilities,
no_new_privs, Landlock and the strict preset, through ``nsapp run`` (``python -m nsapp``) and
the API. Root and nobody both run every test; what this kernel or user cannot have is either
tested as its one-sentence refusal or skipped with the reason.

Whether a cgroup or Landlock can be had is asked of the kernel here (the files, the syscall),
not of the code under test.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from _support_users import NOBODY, ROOT, second_user, tmp_dir

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def nsapp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nsapp", "run", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def api(code: str) -> subprocess.CompletedProcess[str]:
    """Run a script (a file: run_entry starts it again) on the namespaces API."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(textwrap.dedent(code))
    try:
        return subprocess.run(
            [sys.executable, f.name],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        os.unlink(f.name)


def _status(text: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+):\s*(\S+)$", text, re.M))


# --------------------------------------------------------------------------------------------
# What this kernel and user can have, asked of the kernel


def _own_cgroup(controller: str) -> str | None:
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            if controller in names.split(",") or (not names and controller == ""):
                return path
    return None


def _v2_usable(controllers: tuple[str, ...]) -> str | None:
    """Why cgroup v2 with ``controllers`` is not usable by this user here (None: it is)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if " - cgroup2 " in line]
    own = _own_cgroup("")
    if not points or own is None:
        return "no cgroup v2 hierarchy"
    base = os.path.join(points[0], own.lstrip("/"))
    have = Path(base, "cgroup.controllers").read_text().split()
    missing = [c for c in controllers if c not in have]
    if missing:
        return f"cgroup v2 has no {', '.join(missing)} controller for this cgroup ({base})"
    if not os.access(base, os.W_OK):
        return f"{base} is not delegated to this user"
    return None


def _v1_usable(controllers: tuple[str, ...]) -> str | None:
    if not ROOT:
        return "cgroup v1 needs root"
    for c in controllers:
        if not Path("/sys/fs/cgroup", c).is_dir() or _own_cgroup(c) is None:
            return f"no cgroup v1 {c} hierarchy at /sys/fs/cgroup/{c}"
    return None


def cgroup_refusal(*controllers: str) -> str | None:
    """None when the workload can get a cgroup with ``controllers``; else why not."""
    v2 = _v2_usable(controllers)
    v1 = _v1_usable(controllers)
    return None if v2 is None or v1 is None else f"{v2}; {v1}"


def landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(0, int(libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))))


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """A directory this user (root or nobody) may write, outside every implicit Landlock path."""
    d = Path(tempfile.mkdtemp(prefix="sandbox-"))
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


FORKS = """
import os, time
n = 0
try:
    while n < 200:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError as e:
    print("stopped", n, e.errno)
"""


# --------------------------------------------------------------------------------------------
# Resource limits


def test_ulimit_nofile_is_seen_inside() -> None:
    done = nsapp("--ulimit", "nofile=16", "--", "sh", "-c", "ulimit -n; ulimit -Hn")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["16", "16"]


@pytest.mark.skipif(ROOT, reason="root may raise its hard limits (CAP_SYS_RESOURCE)")
def test_ulimit_above_the_hard_limit_is_one_sentence() -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    done = nsapp("--ulimit", f"nofile={hard + 1}", "--", "true")
    assert done.returncode == 125 and done.stderr.count("\n") == 1
    assert f"a hard limit above {hard} needs CAP_SYS_RESOURCE" in done.stderr


def test_cpu_rlimit_kill_is_reported() -> None:
    done = nsapp("--ulimit", "cpu=1", "--", "sh", "-c", "while :; do :; done")
    assert done.returncode == 128 + 24, done.stderr  # SIGXCPU, status unchanged
    assert "killed: CPU time limit 1 s reached (RLIMIT_CPU)" in done.stderr


def test_fork_bomb_is_contained_by_pids_limit(user_dir: Path) -> None:
    (user_dir / "forks.py").write_text(FORKS)
    done = nsapp("--pids-limit", "32", "--", "python3", str(user_dir / "forks.py"))
    refusal = cgroup_refusal("pids")
    if refusal is None:
        assert done.returncode == 0, done.stderr
        stopped = int(done.stdout.split()[1])
        assert done.stdout.split()[2] == "11"  # EAGAIN: the fork was refused
        assert stopped < 32  # the python itself counts
        assert "nsapp run: pids limit 32 reached: " in done.stderr
        # And a real one, which never stops by itself: the runner returns once its shell does.
        bomb = nsapp("--pids-limit", "32", "--", "sh", "-c", "b(){ b|b& }; b 2>/dev/null; sleep 1")
        assert "nsapp run: pids limit 32 reached: " in bomb.stderr
    else:
        # Unprivileged without delegation: one sentence saying so and how to get it.
        assert done.returncode == 125
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert "systemd-run --user --scope -p Delegate=yes" in done.stderr
        assert "limits_best_effort" in done.stderr


def test_fork_bomb_best_effort_is_rlimit_nproc(user_dir: Path) -> None:
    if cgroup_refusal("pids") is None:
        pytest.skip("a cgroup can be had here: best effort uses it, not RLIMIT_NPROC")
    if ROOT:
        pytest.skip("RLIMIT_NPROC does not hold root back (fork(2)): run as another user")
    (user_dir / "forks.py").write_text(FORKS)
    done = nsapp(
        "--pids-limit", "32", "--limits-best-effort", "--", "python3", str(user_dir / "forks.py")
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[1]) < 32
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "best effort, pids_limit 32 is RLIMIT_NPROC" in lines[0]


def test_memory_best_effort_is_rlimit_as() -> None:
    if cgroup_refusal("memory") is None:
        pytest.skip("a cgroup can be had here: best effort uses it, not RLIMIT_AS")
    done = nsapp(
        "--memory", "64m", "--limits-best-effort", "--", "python3", "-c", "bytearray(512 << 20)"
    )
    assert done.returncode == 1 and "MemoryError" in done.stderr  # refused, not killed
    assert "best effort, memory 64 MiB is RLIMIT_AS (address space)" in done.stderr


def test_memory_hog_is_killed_and_reported() -> None:
    refusal = cgroup_refusal("memory")
    if refusal is not None:
        pytest.skip(f"no memory cgroup for this user: {refusal}")
    done = nsapp("--memory", "64m", "--", "python3", "-c", "bytearray(512 << 20)")
    assert done.returncode == 137
    assert done.stderr.strip().endswith("nsapp run: killed: memory limit 64 MiB reached")


def _cgroups_of(runner: int, controller: str, version: int) -> list[Path]:
    """The cgroups the runner ``runner`` made (``reexec-PID-N``), seen from outside."""
    if version == 2:
        with open("/proc/self/mountinfo") as f:
            mount = next(line.split()[4] for line in f if " - cgroup2 " in line)
        base = Path(mount + (_own_cgroup("") or "/"))
    else:
        base = Path(f"/sys/fs/cgroup/{controller}" + (_own_cgroup(controller) or "/"))
    return sorted(p for p in base.glob(f"reexec-{runner}-*") if p.name.split("-")[2].isdigit())


def _version(controller: str) -> int:
    """The cgroup version the runner uses here for ``controller`` (v2 where usable)."""
    return 2 if _v2_usable((controller,)) is None else 1


def _run_held(*flags: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``nsapp run FLAGS -- sh`` that reports, then waits for a line on stdin."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nsapp", "run", *flags, "--", "sh", "-c",
         "echo hidden=$(ls -A /sys/fs/cgroup | wc -l); read line; kill -9 $$"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(),
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, proc.stdout.readline()


@pytest.mark.parametrize("version", [1, 2])
def test_workload_runs_in_its_own_cgroup_hidden_and_removed_after_a_kill(version: int) -> None:
    refusal = (_v1_usable if version == 1 else _v2_usable)(("pids",))
    if refusal is not None:
        pytest.skip(f"cgroup v{version}: {refusal}")
    if version == 1 and _version("pids") == 2:
        pytest.skip("cgroup v2 is usable here, and preferred")
    proc, said = _run_held("--pids-limit", "64")
    made = _cgroups_of(proc.pid, "pids", version)
    assert len(made) == 1 and (made[0] / "pids.max").read_text() == "64\n"
    members = (made[0] / "cgroup.procs").read_text().split()
    assert [Path(f"/proc/{pid}/comm").read_text() for pid in members] == ["sh\n"]
    assert said == "hidden=0\n"  # the cgroup files it could move itself out with: out of sight
    _, err = proc.communicate("\n", timeout=TIMEOUT)
    assert proc.returncode == 137, err
    assert not made[0].exists()  # removed, though the workload was killed


def test_a_cgroup_mounted_inside_shows_only_the_workloads_own() -> None:
    # Root inside (CAP_SYS_ADMIN of its namespaces) mounts a cgroup hierarchy of its own: its
    # root is the cgroup namespace's, which must be the workload's cgroup, or writing its pid
    # into that root's cgroup.procs leaves its limits (v1 checks no cgroup namespace on a move,
    # v2 refuses a move above it).
    refusal = cgroup_refusal("pids")
    if refusal is not None:
        pytest.skip(f"no pids cgroup for this user: {refusal}")
    kind = "cgroup2" if _version("pids") == 2 else "cgroup -o pids"
    done = nsapp(
        "--pids-limit", "32", "--tmpfs", "/mnt", "--", "sh", "-c",
        f"mount -t {kind} none /mnt && echo $$ > /mnt/cgroup.procs; cat /mnt/pids.max",
    )  # fmt: skip
    assert done.stdout == "32\n", done.stderr


def test_cgroup_of_a_runner_killed_by_sigkill_is_removed_by_the_next_run() -> None:
    refusal = cgroup_refusal("pids")
    if refusal is not None:
        pytest.skip(f"no pids cgroup for this user: {refusal}")
    proc, _ = _run_held("--pids-limit", "64")
    (made,) = _cgroups_of(proc.pid, "pids", _version("pids"))
    proc.kill()  # the runner: PID 1 dies with it, and the namespace with PID 1
    proc.communicate(timeout=TIMEOUT)
    deadline = time.monotonic() + 30
    while (made / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert made.exists()  # nobody was left to remove it
    done = nsapp("--pids-limit", "64", "--", "true")
    assert done.returncode == 0, done.stderr
    assert not made.exists()


def test_an_empty_cgroup_left_under_the_runners_own_pid_is_reused() -> None:
    # A runner kill -9'ed leaves reexec-PID-1 behind; once its pid is reused by a new runner,
    # the sweep cannot tell the leftover from the new runner's, and mkdir found it there.
    refusal = cgroup_refusal("pids")
    if refusal is not None:
        pytest.skip(f"no pids cgroup for this user: {refusal}")
    version = _version("pids")
    pick = '" - cgroup2 " in line' if version == 2 else '" - cgroup " in line and ",pids" in line'
    own = "0::" if version == 2 else "pids"
    done = api(
        f"""
        import os
        from pathlib import Path
        from reexec_core import namespaces

        own = next(line.rstrip().split(":", 2)[2] for line in open("/proc/self/cgroup")
                   if {own!r} in line)
        mount = next(line.split()[4] for line in open("/proc/self/mountinfo") if {pick})
        left = Path(mount + own.rstrip("/"), f"reexec-{{os.getpid()}}-1")
        left.mkdir()
        print(namespaces.run(["true"], pids_limit=8), left.exists())
        """
    )
    assert done.stdout.split() == ["0", "False"], done.stderr


def test_cpus_is_a_cfs_quota_of_the_workloads_cgroup() -> None:
    refusal = cgroup_refusal("cpu")
    if refusal is not None:
        pytest.skip(f"no cpu cgroup for this user: {refusal}")
    proc, _ = _run_held("--cpus", "0.5")
    version = _version("cpu")
    (made,) = _cgroups_of(proc.pid, "cpu", version)
    if version == 2:
        assert (made / "cpu.max").read_text().split() == ["50000", "100000"]
    else:
        assert (made / "cpu.cfs_quota_us").read_text() == "50000\n"
    proc.communicate("\n", timeout=TIMEOUT)
    assert proc.returncode == 137 and not made.exists()


# --------------------------------------------------------------------------------------------
# Capabilities, no_new_privs


def test_cap_drop_all_leaves_nothing_and_no_new_privs() -> None:
    grep = ["--", "grep", "-E", "^(Cap|NoNewPrivs)", "/proc/self/status"]
    before = _status(nsapp(*grep).stdout)
    assert int(before["CapEff"], 16) != 0  # root inside its namespace holds them otherwise
    done = nsapp("--cap-drop", "ALL", *grep)
    assert done.returncode == 0, done.stderr
    after = _status(done.stdout)
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(after[name], 16) == 0, (name, after)
    assert after["NoNewPrivs"] == "1"


def test_cap_add_is_kept_across_exec_by_a_non_root_uid() -> None:
    done = nsapp(
        "--map-current", "--cap-drop", "ALL", "--cap-add", "NET_RAW", "--cap-add", "chown",
        "--", "grep", "-E", "^Cap", "/proc/self/status",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    caps = _status(done.stdout)
    want = (1 << 13) | (1 << 0)  # CAP_NET_RAW, CAP_CHOWN
    for name in ("CapPrm", "CapEff", "CapBnd", "CapAmb", "CapInh"):
        assert int(caps[name], 16) == want, (name, caps)


@pytest.mark.skipif(not ROOT, reason="without a user namespace only root may create the others")
def test_cap_drop_without_a_user_namespace_starts_from_the_callers_bounding_set() -> None:
    with open("/proc/self/status") as f:
        bounding = int(_status(f.read())["CapBnd"], 16)
    grep = ["--", "grep", "Cap", "/proc/self/status"]
    done = nsapp("--ns", "pid,mount", "--cap-drop", "NET_RAW", *grep)
    assert done.returncode == 0, done.stderr
    caps = _status(done.stdout)
    for name in ("CapPrm", "CapEff", "CapBnd"):
        assert int(caps[name], 16) == bounding & ~(1 << 13), (name, caps)


@second_user
def test_setuid_binary_gains_nothing_under_no_new_privileges(user_dir: Path) -> None:
    # A setuid copy of id owned by nobody, run by root inside (every id mapped: --subids):
    # without no_new_privs its euid becomes nobody's, with it the exec changes nothing.
    user_dir.chmod(0o755)
    setuid_id = user_dir / "id"
    setuid_id.write_bytes(Path("/usr/bin/id").read_bytes())
    os.chown(setuid_id, NOBODY, NOBODY)
    setuid_id.chmod(0o4755)
    plain = nsapp("--subids", "--", str(setuid_id), "-u")
    assert plain.stdout.strip() == str(NOBODY), plain.stderr  # the setuid bit works here
    guarded = nsapp("--subids", "--no-new-privileges", "--", str(setuid_id), "-u")
    assert guarded.returncode == 0, guarded.stderr
    assert guarded.stdout.strip() == "0"


def test_run_entry_and_threaded_caller_get_the_sandbox() -> None:
    done = api(
        """
        import sys, threading, time
        import reexec_core
        from reexec_core import namespaces

        def status() -> int:
            for line in open("/proc/self/status"):
                if line.startswith(("CapEff", "NoNewPrivs")):
                    print(line.strip())
            return 0

        reexec_core.register("sandbox-status", status)
        if reexec_core.init():
            sys.exit(0)
        namespaces.run_entry("sandbox-status", cap_drop="ALL")
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        namespaces.run(["sh", "-c", "ulimit -n"], ulimits={"nofile": 16})
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["CapEff:", "0000000000000000", "NoNewPrivs:", "1", "16"]


def test_threaded_caller_gets_the_strict_preset() -> None:
    # The fresh interpreter's set-up imports the seccomp installer before Landlock holds (the
    # package lies outside the implicit read-only set: this tree, a venv, a .pyz).
    done = api(
        """
        import sys, threading, time
        import reexec_core
        from reexec_core import namespaces

        if reexec_core.init():
            sys.exit(0)
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        namespaces.run(["sh", "-c", "grep NoNewPrivs /proc/self/status"], sandbox="strict")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["NoNewPrivs:", "1"]


# --------------------------------------------------------------------------------------------
# Landlock


@pytest.mark.skipif(landlock_abi() == 0, reason="this kernel has no Landlock")
def test_landlock_denies_writes_outside_rw(user_dir: Path) -> None:
    inside, outside = user_dir / "in", user_dir / "out"
    inside.mkdir()
    outside.mkdir()
    done = nsapp(
        "--landlock-rw", str(inside), "--landlock-ro", str(outside), "--", "sh", "-c",
        f"echo a > {inside}/f && echo wrote; cat {inside}/f; echo b > {outside}/f",
    )  # fmt: skip
    assert done.stdout.split() == ["wrote", "a"], done.stderr
    assert done.returncode != 0 and "Permission denied" in done.stderr
    assert (inside / "f").read_text() == "a\n" and not (outside / "f").exists()


@pytest.mark.skipif(landlock_abi() == 0, reason="this kernel has no Landlock")
def test_landlock_rules_follow_the_mounts(user_dir: Path) -> None:
    # Under the strict preset a tmpfs and a bind target are writable, a ro-bind one is not
    # (a root caller's workload is nobody on the host: the bind source is made writable).
    (user_dir / "src").mkdir(mode=0o777)
    user_dir.chmod(0o755)
    (user_dir / "src").chmod(0o777)
    done = nsapp(
        "--sandbox", "strict", "--bind", f"{user_dir}/src:/mnt",
        "--ro-bind", f"{user_dir}/src:/media", "--tmpfs", "/tmp", "--", "sh", "-c",
        "echo a > /tmp/f && echo b > /mnt/g && cat /tmp/f /media/g; echo c > /media/h",
    )  # fmt: skip
    assert done.stdout.split() == ["a", "b"], done.stderr
    assert "/media/h: Read-only file system" in done.stderr or "Permission denied" in done.stderr
    assert (user_dir / "src" / "g").read_text() == "b\n"


@pytest.mark.skipif(landlock_abi() < 6, reason="Landlock scopes need ABI 6 (Linux 6.12)")
def test_strict_cannot_reach_the_hosts_abstract_sockets_or_signal_out() -> None:
    # Without a network namespace of its own (to reach the network) the workload shares the
    # host's abstract unix sockets (D-Bus, X11: no path for Landlock to judge), and without a
    # PID namespace it sees the caller's processes: the Landlock domain's scopes close both.
    import socket

    name = f"reexec-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind("\0" + name)
        server.listen(1)
        probe = (
            "import os, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect('\\0' + sys.argv[1]); print('connected')\n"
            "except OSError as e:\n    print('connect', e.errno)\n"
            "try:\n    os.kill(int(sys.argv[2]), 0); print('signalled')\n"
            "except OSError as e:\n    print('kill', e.errno)\n"
        )
        done = nsapp(
            "--ns", "user,mount", "--sandbox", "strict", "--",
            "/usr/bin/python3", "-c", probe, name, str(os.getpid()),
        )  # fmt: skip
    assert done.stdout.split() == ["connect", "1", "kill", "1"], done.stderr  # EPERM, EPERM


def test_strict_cannot_connect_to_the_sessions_named_sockets(user_dir: Path) -> None:
    # A named unix socket of the caller's session (ssh-agent in /tmp, D-Bus and systemd --user
    # in /run/user): Landlock does not judge connect(2), and the session bus alone would run
    # anything outside the sandbox. The strict preset covers those directories.
    import socket

    user_dir.chmod(0o777)  # reachable by a root caller's strict workload (nobody) too
    path = user_dir / "agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        path.chmod(0o777)
        server.listen(1)
        probe = (
            "import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1]); print('connected')\n"
            "except OSError as e:\n    print('connect', e.errno)\n"
        )
        plain = nsapp("--", "/usr/bin/python3", "-c", probe, str(path))
        strict = nsapp("--sandbox", "strict", "--", "/usr/bin/python3", "-c", probe, str(path))
    assert plain.stdout == "connected\n", plain.stderr  # the control
    assert strict.stdout == "connect 2\n", strict.stderr  # ENOENT: out of sight


@contextmanager
def _callers_pty() -> Iterator[tuple[str, int]]:
    """(path, slave descriptor) of a pty of the caller's, owned as its strict workload is."""
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        if ROOT:
            os.chown(path, NOBODY, -1)  # a root caller's strict workload is nobody
        yield path, slave
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.skipif(landlock_abi() == 0, reason="this kernel has no Landlock")
def test_strict_cannot_open_another_terminal() -> None:
    # Another terminal of the caller's (a pty it owns, 0620): the workload could read what is
    # typed there, or write to it, by its /dev/pts path. Its own terminal stays its own.
    with _callers_pty() as (path, _):
        done = nsapp("--sandbox", "strict", "--", "sh", "-c", f"echo x > {path} || echo refused")
    assert done.stdout == "refused\n", done.stderr
    assert "Permission denied" in done.stderr


@pytest.mark.skipif(landlock_abi() == 0, reason="this kernel has no Landlock")
def test_strict_cannot_read_the_terminal_it_was_given_to_write_only() -> None:
    # stdout is the caller's terminal, stdin is not: opening the terminal by its path to read
    # would give the workload what is typed there (racing the caller's shell for it).
    with _callers_pty() as (path, slave):
        done = subprocess.run(
            [sys.executable, "-m", "nsapp", "run", "--sandbox", "strict", "--", "sh", "-c",
             f"echo out > {path} && echo wrote >&2; exec 3< {path} && echo read >&2"],
            stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, text=True,
            env=_env(), timeout=TIMEOUT,
        )  # fmt: skip
    assert "wrote\n" in done.stderr and "read\n" not in done.stderr, done.stderr
    assert "Permission denied" in done.stderr


#: Starts ``nsapp run ARGS`` under a seccomp filter that answers ENOSYS to
#: landlock_create_ruleset: a kernel without Landlock, as the runner sees it.
NO_LANDLOCK = """
import json, os, sys, tempfile
from reexec_core.namespaces import _caps, _seccomp
rule = {"names": ["landlock_create_ruleset"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}, f)
program = _seccomp.load(f.name)
os.unlink(f.name)
_caps.set_no_new_privs()
_seccomp.install(program)
os.execv(sys.executable, [sys.executable, "-m", "nsapp", "run", *sys.argv[1:]])
"""


def test_without_landlock_paths_are_refused_and_strict_runs_without(user_dir: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", NO_LANDLOCK, *args],
            capture_output=True, text=True, env=_env(), timeout=TIMEOUT,
        )  # fmt: skip

    user_dir.chmod(0o777)  # a root caller's strict workload is nobody on the host
    asked = run("--landlock-rw", str(user_dir), "--", "true")
    assert asked.returncode == 125 and asked.stderr.count("\n") == 1
    assert "cannot restrict the workload with Landlock: this kernel has no Landlock" in asked.stderr
    strict = run(
        "--sandbox", "strict", "--bind", f"{user_dir}:{user_dir}", "--", "sh", "-c",
        f"echo ok; touch {user_dir}/x",
    )  # fmt: skip
    assert strict.returncode == 0 and strict.stdout == "ok\n", strict.stderr
    assert "nsapp run: this kernel has no Landlock: the strict preset runs without" in strict.stderr
    assert (user_dir / "x").exists()  # no file rules: the write went through


# --------------------------------------------------------------------------------------------
# The strict preset, misuse, and what a run without sandbox options does not pay


def test_strict_preset_runs_sh_without_capabilities(user_dir: Path) -> None:
    user_dir.chmod(0o777)  # so that Landlock, not DAC, is what refuses the write
    done = nsapp(
        "--sandbox", "strict", "--", "sh", "-c",
        f"echo ok; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; touch {user_dir}/x; "
        "unshare -U true || echo unshare-refused",
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert lines[0] == "ok" and lines[-1] == "unshare-refused", done.stderr
    assert "unshare failed: Operation not permitted" in done.stderr  # seccomp: EPERM
    assert _status("\n".join(lines[1:3])) == {"CapEff": "0000000000000000", "NoNewPrivs": "1"}
    # Refused: by Landlock, or out of sight (/tmp is covered, see the named sockets' test).
    assert not (user_dir / "x").exists()
    assert "Permission denied" in done.stderr or "No such file or directory" in done.stderr


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--memory", "12q"], "memory must be a size"),
        (["--ulimit", "foo=1"], "unknown limit 'foo'"),
        (["--ulimit", "nofile=9:3"], "soft limit is above the hard limit"),
        (["--cap-drop", "CAP_NOPE"], "unknown capability 'CAP_NOPE'"),
        (["--pids-limit", "x"], "--pids-limit"),
        (["--cpus", "1000"], "cpus must be between"),
        (["--sandbox", "loose"], "sandbox must be 'strict'"),
    ],
)
def test_bad_values_are_one_sentence(flags: list[str], words: str) -> None:
    done = nsapp(*flags, "--", "true")
    assert done.returncode == 2
    assert words in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 or done.stderr.startswith("usage:")


def test_misuse_of_the_api_raises() -> None:
    done = api(
        """
        from reexec_core import namespaces
        for kw in ({"cap_drop": 5}, {"memory": True}, {"ulimits": "nofile=1"}, {"cpus": "1"}):
            try:
                namespaces.run(["true"], **kw)
            except TypeError as e:
                print("TypeError")
        """
    )
    assert done.stdout.split() == ["TypeError"] * 4, done.stderr


def test_a_run_without_sandbox_options_imports_none_of_it() -> None:
    done = api(
        """
        import sys
        from reexec_core import namespaces
        assert namespaces.run(["true"]) == 0
        print(sorted(m for m in sys.modules if m.split(".")[-1] in
              ("_sandbox", "_caps", "_cgroup", "_landlock", "resource")))
        """
    )
    assert done.stdout.strip() == "[]", done.stderr


# --------------------------------------------------------------------------------------------
# seccomp, inside a real run

#: keyctl, bpf, unshare, mount by number (no libc wrapper for keyctl and bpf).
SYSCALLS = {
    "x86_64": {"keyctl": 250, "bpf": 321, "unshare": 272, "mount": 165},
    "aarch64": {"keyctl": 219, "bpf": 280, "unshare": 97, "mount": 40},
}
PROBE = """
import ctypes, errno, sys
libc = ctypes.CDLL(None, use_errno=True)
for name, nr in %s.items():
    args = [0x10000000] if name == "unshare" else [0, 0, 0, 0, 0]  # CLONE_NEWUSER
    rc = libc.syscall(nr, *args)
    print(name, errno.errorcode.get(ctypes.get_errno(), "0") if rc == -1 else "allowed")
"""


@pytest.mark.skipif(os.uname().machine not in SYSCALLS, reason="syscall numbers for x86_64/arm64")
def test_seccomp_default_denies_kernel_attack_syscalls_while_programs_run() -> None:
    probe = PROBE % (json.dumps(SYSCALLS[os.uname().machine]),)
    script = f"python3 -c '{probe}'; echo sh; tar -cf - /etc/hostname 2>/dev/null | tar -tf -"
    plain = nsapp("--", "sh", "-c", script)
    assert "unshare allowed" in plain.stdout, plain.stderr  # the probe works unfiltered
    done = nsapp("--seccomp", "default", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:4] == ["keyctl EPERM", "bpf EPERM", "unshare EPERM", "mount EPERM"]
    assert lines[4:] == ["sh", "etc/hostname"]


def test_docker_format_profile_sees_the_capabilities_the_workload_keeps(user_dir: Path) -> None:
    # mkdir is refused only to a workload without CAP_SYS_ADMIN (Docker's "excludes" caps).
    profile = user_dir / "profile.json"
    rule = {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
            "excludes": {"caps": ["CAP_SYS_ADMIN"]}}  # fmt: skip
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}))
    target = user_dir / "d"
    held = nsapp("--seccomp", str(profile), "--", "mkdir", str(target))
    assert held.returncode == 0 and target.is_dir(), held.stderr
    target.rmdir()
    dropped = nsapp("--seccomp", str(profile), "--cap-drop", "ALL", "--", "mkdir", str(target))
    assert dropped.returncode == 1 and "Operation not permitted" in dropped.stderr
    assert not target.exists()


def test_malformed_seccomp_profile_is_one_sentence(user_dir: Path) -> None:
    profile = user_dir / "bad.json"
    profile.write_text('{"defaultAction": ')
    done = nsapp("--seccomp", str(profile), "--", "true")
    assert done.returncode == 125
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"the seccomp profile {profile} is not valid JSON" in done.stderr


# --------------------------------------------------------------------------------------------
# A root caller: the strict preset's workload is no host root


@pytest.mark.skipif(not ROOT, reason="the caller must be root: its strict workload is nobody")
def test_strict_as_root_cannot_read_or_write_roots_files() -> None:
    # A plain run as root is root mapped onto root: it reads the 0600 file and writes the 0644
    # one (the control). Under the strict preset it is root of its namespace only, mapped
    # onto nobody: DAC stops it at both (in a bind mount, which Landlock allows).
    with tmp_dir("strict-root-", 0o755) as d:
        (d / "secret").write_text("s3cret\n")
        (d / "secret").chmod(0o600)
        (d / "target").write_text("kept\n")
        (d / "target").chmod(0o644)
        attack = f"id -u; cat {d}/secret; echo owned > {d}/target"
        plain = nsapp("--bind", f"{d}:{d}", "--", "sh", "-c", attack)
        assert plain.stdout.split() == ["0", "s3cret"], plain.stderr
        assert (d / "target").read_text() == "owned\n"
        (d / "target").write_text("kept\n")
        # With a cgroup limit too: the workload joins its cgroup before it takes its ids.
        strict = nsapp(
            "--sandbox", "strict", "--pids-limit", "32", "--bind", f"{d}:{d}", "--",
            "sh", "-c", attack,
        )  # fmt: skip
        assert strict.stdout.split() == ["0"], strict.stderr  # still root inside its namespace
        assert strict.stderr.count("Permission denied") == 2, strict.stderr
        assert (d / "target").read_text() == "kept\n"
        # A program nobody may not reach is said as such (126), not as a mode or mount problem.
        hidden = Path(tempfile.mkdtemp(dir=d))  # 0700, root's
        (hidden / "tool").write_bytes(Path("/bin/true").read_bytes())
        (hidden / "tool").chmod(0o755)
        denied = nsapp("--sandbox", "strict", "--", str(hidden / "tool"))
        assert denied.returncode == 126, denied.stderr
        assert f"cannot run {hidden}/tool as nobody (the strict preset" in denied.stderr
        # Without a user namespace there is none to be root of: it is nobody on the host.
        bare = nsapp(
            "--ns", "pid,mount", "--sandbox", "strict", "--bind", f"{d}:{d}", "--",
            "sh", "-c", attack,
        )  # fmt: skip
        assert bare.stdout.split() == [str(NOBODY)], bare.stderr
        assert bare.stderr.count("Permission denied") == 2, bare.stderr
        assert (d / "target").read_text() == "kept\n"
