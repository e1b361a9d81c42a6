"""Seccomp-bpf (issue 16, "Syscalls"): ``_seccomp.load`` compiles, the real kernel enforces.

Every filter test runs a fresh interpreter that calls each probe once *before* installing the
filter and once *after* (with no_new_privs set, as the runner does), and the probes are chosen
so that the kernel's own answer differs from the filter's (keyctl with an unknown operation is
EOPNOTSUPP, mount with a bad pointer EFAULT, ...): so every assertion fails if the filter were
not installed, as root and as nobody alike. Programs started after ``exec`` also check
``Seccomp: 2`` in their own ``/proc/self/status``.
"""

from __future__ import annotations

import errno
import json
import operator
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _support_users import ROOT

from reexec_core.namespaces import _seccomp
from reexec_core.namespaces._seccomp_profile import MACHINES
from reexec_core.namespaces.errors import NamespaceError, SeccompProfileError

REPO = Path(__file__).resolve().parent.parent
MACHINE = os.uname().machine
pytestmark = pytest.mark.skipif(
    MACHINE not in MACHINES, reason=f"no seccomp syscall table for {MACHINE}"
)
NR = MACHINES.get(MACHINE, (0, "", "", {}))[3]

# One interpreter per test: load, probe, no_new_privs, install, probe again, report, exec.
CHILD = textwrap.dedent(
    """
    import ctypes, json, os, sys
    from reexec_core.namespaces import _seccomp
    spec = json.loads(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def call(nr, *args):
        ctypes.set_errno(0)
        rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])
        return 0 if rc != -1 else ctypes.get_errno()
    program = _seccomp.load(spec["profile"], caps=frozenset(spec.get("caps", ())))
    fd = os.open("/dev/null", os.O_RDONLY)  # ioctl probes: not a terminal
    calls = [[fd if a == "FD" else a for a in c] for c in spec.get("calls", [])]
    before = [call(*c) for c in calls] if spec.get("before", True) else []
    if spec.get("no_new_privs", True) and libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl")
    try:
        _seccomp.install(program)
    except OSError as e:
        print(json.dumps({"install": [e.errno, e.strerror]}), flush=True)
        sys.exit(0)
    after = [call(*c) for c in calls]
    os.write(1, (json.dumps({"before": before, "after": after}) + "\\n").encode())
    if spec.get("exec"):
        try:
            os.execv(spec["exec"][0], spec["exec"])
        except OSError as e:
            os.write(1, ("exec failed: %d\\n" % e.errno).encode())
    """
)


def _run(
    profile: str, env: dict[str, str] | None = None, cwd: Path = REPO, **spec: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps({"profile": profile, **spec})],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=cwd,
    )


def _probe(profile: str, calls: list[list[object]], **spec: object) -> tuple[list[int], list[int]]:
    """(errno before, errno after) of each call; 0 is success."""
    result = _run(profile, calls=calls, **spec)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[0])
    return report["before"], report["after"]


def _profile(tmp_path: Path, profile: object, name: str = "profile.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(profile) if not isinstance(profile, str) else profile)
    return str(path)


U64 = 2**64 - 1
CLONE_NEWUSER, CLONE_FS = 0x10000000, 0x200
TIOCSTI = 0x5412

def _uring(answer: int) -> int:
    """What io_uring answers without a filter: ``answer``, or EPERM where a sysctl disables it."""
    try:
        disabled = int(Path("/proc/sys/kernel/io_uring_disabled").read_text())
    except (OSError, ValueError):
        disabled = 0
    return errno.EPERM if disabled == 2 else answer


# name -> (call, what the kernel answers without the filter, what the default filter answers)
ATTACKS: dict[str, tuple[list[object], int, int]] = {
    "keyctl": ([NR.get("keyctl"), 0xDEAD], errno.EOPNOTSUPP, errno.EPERM),
    "bpf": ([NR.get("bpf"), 0xDEAD, 0, 0], errno.EINVAL, errno.EPERM),
    "unshare": ([NR.get("unshare"), 0x1], errno.EINVAL, errno.EPERM),  # CSIGNAL bits: invalid
    "mount": ([NR.get("mount"), 0, 1, 0, 0, 0], errno.EFAULT, errno.EPERM),
    # CLONE_NEWUSER with CLONE_FS is refused by the kernel itself: no child is ever created
    "clone(CLONE_NEWUSER)": ([NR.get("clone"), CLONE_NEWUSER | CLONE_FS, 0, 0, 0, 0],
                             errno.EINVAL, errno.EPERM),
    "clone3": ([NR.get("clone3"), 0, 0], errno.EINVAL, errno.ENOSYS),
    "perf_event_open": ([NR.get("perf_event_open"), 0, 0, U64, U64, 0], errno.EFAULT,
                        errno.EPERM),
    # UFFD_USER_MODE_ONLY passes the sysctl check, the unknown flag then fails
    "userfaultfd": ([NR.get("userfaultfd"), 0x1 | 0x100], errno.EINVAL, errno.EPERM),
    "ioctl(TIOCSTI)": ([NR.get("ioctl"), "FD", TIOCSTI, 0], errno.ENOTTY, errno.EPERM),
    # the kernel reads the request as a 32-bit int: a high bit must not slip past the rule
    "ioctl(TIOCSTI | 1<<32)": ([NR.get("ioctl"), "FD", TIOCSTI | 1 << 32, 0], errno.ENOTTY,
                               errno.EPERM),
    "ioctl(USERFAULTFD_IOC_NEW)": ([NR.get("ioctl"), "FD", 0xAA00], errno.ENOTTY, errno.EPERM),
    "ptrace": ([NR.get("ptrace"), 0xDEAD, 0, 0, 0], errno.ESRCH, errno.EPERM),
    "name_to_handle_at": ([NR.get("name_to_handle_at"), U64, 0, 0, 0, 0], errno.EFAULT,
                          errno.EPERM),
    "open_by_handle_at": ([NR.get("open_by_handle_at"), U64, 0, 0], errno.EFAULT, errno.EPERM),
    # io_uring runs operations in kernel threads the filter never sees (Docker denies it too)
    "io_uring_setup": ([NR.get("io_uring_setup"), 1, 0], _uring(errno.EFAULT), errno.EPERM),
    "io_uring_enter": ([NR.get("io_uring_enter"), -1, 0, 0, 0, 0, 0], _uring(errno.EBADF),
                       errno.EPERM),
    "io_uring_register": ([NR.get("io_uring_register"), -1, 0, 0, 0], _uring(errno.EINVAL),
                          errno.EPERM),
    "getppid (allowed)": ([NR.get("getppid")], 0, 0),
    # -1 is how a tracer skips a call: no x32 call, so the default action, not a kill
    "syscall(-1)": ([-1], errno.ENOSYS, errno.ENOSYS),
}


def test_default_refuses_the_kernel_attack_surface_with_eperm() -> None:
    names = list(ATTACKS)
    before, after = _probe("default", [ATTACKS[n][0] for n in names])
    assert dict(zip(names, before, strict=True)) == {n: ATTACKS[n][1] for n in names}
    assert dict(zip(names, after, strict=True)) == {n: ATTACKS[n][2] for n in names}


def test_default_allows_docker_personalities_only() -> None:
    nr = NR["personality"]
    before, after = _probe("default", [[nr, 0xFFFFFFFF], [nr, 0x0040000], [nr, 0x0]])
    assert before == [0, 0, 0]  # query, ADDR_NO_RANDOMIZE, PER_LINUX
    assert after == [0, errno.EPERM, 0]


def test_default_runs_ordinary_programs(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        set -e
        grep -q '^Seccomp:[[:space:]]*2' /proc/self/status && echo filtered
        mkdir d && echo hello > d/f && tar -cf d.tar d && tar -tf d.tar | sort | tr '\\n' ' '
        echo
        "$PY" -c 'import ssl, subprocess, threading
        t = threading.Thread(target=print, args=("thread",)); t.start(); t.join()
        print(subprocess.run(["echo", "child"], capture_output=True, text=True).stdout.strip())
        print("ssl", ssl.OPENSSL_VERSION.split()[0])'
        if unshare -U true 2>/dev/null; then echo unshare-ran; else echo unshare-refused; fi
        if command -v gcc >/dev/null && command -v as >/dev/null; then
            printf 'int main(void) { return 7; }\\n' > t.c && gcc -o t t.c
            ./t || echo "gcc $?"
        else
            echo "no gcc"
        fi
        """
    )
    sh = shutil.which("sh") or "/bin/sh"
    result = _run("default", {"PY": sys.executable}, tmp_path, exec=[sh, "-c", script])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()[1:]
    gcc = "gcc 7" if shutil.which("gcc") and shutil.which("as") else "no gcc"
    assert lines == [
        "filtered", "d/ d/f ", "thread", "child", "ssl OpenSSL", "unshare-refused", gcc
    ], result.stderr


# i386 getpid (20) by int 0x80 from an executable page: mov eax, 20; int 0x80; ret. Prints
# what the call returned (a pid, or -errno) and the process's seccomp mode.
INT80 = textwrap.dedent(
    """
    import ctypes, mmap
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(bytes.fromhex("b814000000cd80c3"))
    fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
    got = fn()
    mode = open("/proc/self/status").read().split("Seccomp:")[1].split()[0]
    print(got, mode, flush=True)
    """
)


def _int80(profile: str | None) -> tuple[int, str, int]:
    """(exit status, what i386 getpid returned, the pid) in a child, filtered by ``profile``."""
    code = INT80 if profile is None else CHILD + INT80
    with subprocess.Popen(
        [sys.executable, "-c", code, json.dumps({"profile": profile})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as child:
        out, _ = child.communicate(timeout=60)
    return child.returncode, (out.splitlines() or [""])[-1], child.pid


def _skip_without_i386() -> None:
    status, got, pid = _int80(None)
    if got != f"{pid} 0":
        pytest.skip(f"int 0x80 does not reach the i386 ABI here (exit {status}, got {got!r})")


@pytest.mark.skipif(MACHINE != "x86_64", reason="the i386 and x32 ABIs are x86_64's")
def test_default_kills_a_call_through_another_abi() -> None:
    # x32 getpid: bit 30 set. Without the filter: ENOSYS (no CONFIG_X86_X32_ABI) or a pid.
    result = _run("default", calls=[[0x40000000 | NR["getpid"]]])
    assert result.returncode == -signal.SIGSYS, (result.returncode, result.stdout, result.stderr)
    _skip_without_i386()
    assert _int80("default")[0] == -signal.SIGSYS


@pytest.mark.skipif(MACHINE != "x86_64", reason="the i386 ABI is x86_64's")
def test_profile_judges_i386_calls_with_their_numbers_when_it_lists_x86(tmp_path: Path) -> None:
    _skip_without_i386()
    for arches, expect in ((["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"], "-55 2"), ([], "killed")):
        # getpid is 39 on x86_64 and 20 on i386: the rule must catch both by name.
        profile = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": arches,
                   "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 55}]}
        path = _profile(tmp_path, profile)
        assert _probe(path, [[NR["getpid"]]])[1] == [55]
        status, got, _ = _int80(path)
        assert (got if status == 0 else "killed" if status == -signal.SIGSYS else status) == expect


# What /bin/true and this interpreter's last steps before exec call, with room for other libcs.
ALLOW_TRUE = (
    "read write openat open close fstat newfstatat statx lseek mmap mprotect munmap brk "
    "pread64 access execve arch_prctl set_tid_address set_robust_list rseq prlimit64 "
    "getrandom futex rt_sigaction rt_sigprocmask exit exit_group getcwd uname ioctl fcntl "
    "readlink readlinkat getpid gettid madvise"
).split()


def test_profile_allow_list_runs_true_and_refuses_the_rest(tmp_path: Path) -> None:
    true = shutil.which("true") or "/bin/true"
    for allowed, expect in ((ALLOW_TRUE, ""), ([n for n in ALLOW_TRUE if n != "execve"], "13")):
        profile = {
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": errno.EACCES,
            "architectures": [MACHINES[MACHINE][1]],
            "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}],
        }
        result = _run(_profile(tmp_path, profile), exec=[true], calls=[[NR["getppid"]]])
        assert result.returncode == 0, result.stderr
        report, *rest = result.stdout.splitlines()
        assert json.loads(report) == {"before": [0], "after": [errno.EACCES]}
        assert rest == ([f"exec failed: {expect}"] if expect else [])


def test_profile_allow_all_with_one_denied_syscall(tmp_path: Path) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid", "no_such_syscall"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 77},
                     {"name": "getpgrp", "action": "SCMP_ACT_ERRNO", "errnoRet": 78}],  # old key
    }
    sh = shutil.which("sh") or "/bin/sh"
    result = _run(
        _profile(tmp_path, profile),
        calls=[[NR["getppid"]], [NR["getpgrp"]], [NR["getuid"]]],
        exec=[sh, "-c", "grep '^Seccomp:' /proc/self/status | tr -d ' \\t'"],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        json.dumps({"before": [0, 0, 0], "after": [77, 78, 0]}), "Seccomp:2"
    ]


@pytest.mark.parametrize(
    ("action", "outcome"),
    [
        ("SCMP_ACT_TRACE", "errno 38"),  # no tracer attached: the kernel answers ENOSYS
        ("SCMP_ACT_KILL_PROCESS", "killed"),
        ("SCMP_ACT_KILL", "killed"),  # the only thread: the process goes with it
        ("SCMP_ACT_TRAP", "killed"),  # SIGSYS, not handled
    ],
)
def test_profile_actions_as_the_kernel_applies_them(
    tmp_path: Path, action: str, outcome: str
) -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["getppid"], "action": action}]}
    result = _run(_profile(tmp_path, profile), calls=[[NR["getppid"]]])
    if outcome == "killed":
        assert result.returncode == -signal.SIGSYS, (result.returncode, result.stderr)
    else:
        assert json.loads(result.stdout) == {"before": [0], "after": [int(outcome.split()[1])]}


OPS = {
    "SCMP_CMP_EQ": operator.eq,
    "SCMP_CMP_NE": operator.ne,
    "SCMP_CMP_LT": operator.lt,
    "SCMP_CMP_LE": operator.le,
    "SCMP_CMP_GT": operator.gt,
    "SCMP_CMP_GE": operator.ge,
}
V = 0x1_0000_0005  # a high half that is not zero
INPUTS = [V, V - 1, V + 1, 5, 6, 4, 0x2_0000_0005, 0x2_0000_0000, 0x1_0000_0000,
          0x0_FFFF_FFFF, 0x1_FFFF_FFFF, 0, U64]
MASK, DATUM = 0xFF00_0000_00FF_00FF, 0x1200_0000_0034_0056
MASKED_INPUTS = [DATUM, DATUM | 0x00FF_FF00_FF00_FF00, DATUM ^ 1 << 56, DATUM ^ 1 << 4,
                 DATUM ^ 1 << 16, 0, U64]


def test_profile_argument_comparisons_use_all_64_bits(tmp_path: Path) -> None:
    # One harmless syscall per operator (they ignore their arguments); a match returns 100+i.
    targets = ["getppid", "getpgrp", "getuid", "getgid", "geteuid", "getegid", "sched_yield"]
    rules: list[dict[str, object]] = [
        {"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": 100 + i,
         "args": [{"index": i % 6, "value": V, "op": op}]}
        for i, (name, op) in enumerate(zip(targets, OPS, strict=False))
    ]
    rules.append({"names": ["sched_yield"], "action": "SCMP_ACT_ERRNO", "errnoRet": 106,
                  "args": [{"index": 3, "value": MASK, "valueTwo": DATUM,
                            "op": "SCMP_CMP_MASKED_EQ"}]})
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}
    calls, expected = [], []
    for i, (name, op) in enumerate(zip(targets, OPS.values(), strict=False)):
        for x in INPUTS:
            args = [0] * 6
            args[i % 6] = x
            calls.append([NR[name], *args])
            expected.append(100 + i if op(x, V) else 0)
    for x in MASKED_INPUTS:
        calls.append([NR["sched_yield"], 0, 0, 0, x, 0, 0])
        expected.append(106 if x & MASK == DATUM else 0)
    before, after = _probe(_profile(tmp_path, profile), calls)
    assert before == [0] * len(calls)
    assert after == expected


def test_profile_rules_combine_in_order_with_conditions(tmp_path: Path) -> None:
    def rule(name: str, ret: int, args: list[tuple[int, int]] = (), **kw: object) -> object:
        return {"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": ret,
                "args": [{"index": i, "value": v, "op": "SCMP_CMP_EQ"} for i, v in args], **kw}

    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            rule("getppid", 11, [(0, 1)]),
            rule("getppid", 12, [(0, 1), (1, 2)]),  # shadowed by the rule before
            rule("getppid", 13, [(1, 2)]),
            rule("getppid", 14, [(0, 3), (0, 4)]),  # one index twice: either (runc)
            rule("getpgrp", 21, includes={"caps": ["CAP_SYS_ADMIN"]}),
            rule("getpgrp", 22, excludes={"caps": ["CAP_SYS_ADMIN"]}),
            rule("getuid", 31, includes={"minKernel": "2.6"}),
            rule("getgid", 32, includes={"minKernel": "999.0"}),
            rule("geteuid", 33, excludes={"arches": ["amd64", "arm64"]}),
            rule("getegid", 34, includes={"arches": ["amd64", "arm64"]}),
        ],
    }
    path = _profile(tmp_path, profile)
    ppid = NR["getppid"]
    calls = [[ppid, 1, 2], [ppid, 0, 2], [ppid, 3, 0], [ppid, 4, 0], [ppid, 0, 0], [ppid, 1, 0],
             [NR["getpgrp"]], [NR["getuid"]], [NR["getgid"]], [NR["geteuid"]], [NR["getegid"]]]
    _, after = _probe(path, calls)
    assert after == [11, 13, 14, 14, 0, 11, 22, 31, 0, 0, 34]
    _, after = _probe(path, calls[6:7], caps=["CAP_SYS_ADMIN"])
    assert after == [21]


def test_profile_needing_long_jumps_loads_and_works(tmp_path: Path) -> None:
    # A distinct rule for every syscall: the number search spans far more than 255
    # instructions, so its conditional jumps must be widened into long ones.
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 + nr % 200,
                      "args": [{"index": 5, "value": 7_000_000 + nr, "op": "SCMP_CMP_EQ"}]}
                     for name, nr in NR.items()],
    }
    path = _profile(tmp_path, profile)
    assert 255 < len(_seccomp.load(path)) // 8 <= 4096
    calls = [[NR[n], 0, 0, 0, 0, 0, 7_000_000 + NR[n]] for n in ("getppid", "sched_yield")]
    calls.append([NR["getppid"], 0, 0, 0, 0, 0, 7_000_000])
    before, after = _probe(path, calls)
    assert before == [0, 0, 0]
    assert after == [1 + NR["getppid"] % 200, 1 + NR["sched_yield"] % 200, 0]


def _docker_profile() -> str | None:
    path = os.environ.get("SECCOMP_DOCKER_PROFILE") or "/usr/share/containers/seccomp.json"
    return path if os.path.isfile(path) else None


@pytest.mark.skipif(
    _docker_profile() is None,
    reason="no Docker default profile: set SECCOMP_DOCKER_PROFILE or install "
    "golang-github-containers-common (/usr/share/containers/seccomp.json)",
)
def test_docker_default_profile_loads_and_runs_a_shell() -> None:
    path = _docker_profile()
    assert path is not None
    program = _seccomp.load(path)
    assert 0 < len(program) // 8 <= 4096
    sh = shutil.which("sh") or "/bin/sh"
    result = _run(path, exec=[sh, "-c", "grep '^Seccomp:' /proc/self/status | tr -d ' \\t'"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["Seccomp:2"]


@pytest.mark.skipif(
    _docker_profile() is None or MACHINE != "x86_64",
    reason="needs x86_64 and the Docker default profile (see the test above)",
)
def test_docker_default_profile_lets_i386_calls_through_as_docker_does() -> None:
    _skip_without_i386()
    path = _docker_profile()
    assert path is not None
    status, got, pid = _int80(path)
    assert (status, got) == (0, f"{pid} 2")


@pytest.mark.skipif(ROOT, reason="root holds CAP_SYS_ADMIN, which installs without no_new_privs")
def test_install_without_no_new_privs_is_refused() -> None:
    result = _run("default", no_new_privs=False)
    assert json.loads(result.stdout) == {
        "install": [errno.EACCES, "the kernel installs a seccomp filter only after "
                    "PR_SET_NO_NEW_PRIVS (or with CAP_SYS_ADMIN)"]
    }


def test_unconfined_is_no_program() -> None:
    assert _seccomp.load("unconfined") == b""
    assert len(_seccomp.load("default")) % 8 == 0


BAD = [
    ("{", "is not valid JSON (Expecting property name enclosed in double quotes at line 1 "
     "column 2)"),
    ("[]", "is not a JSON object with defaultAction and syscalls"),
    ({"syscalls": []}, 'has no defaultAction; add e.g. "defaultAction": "SCMP_ACT_ERRNO"'),
    ({"defaultAction": "SCMP_ACT_BOGUS"},
     "has the unknown action 'SCMP_ACT_BOGUS' as defaultAction; use one of SCMP_ACT_ALLOW, "
     "SCMP_ACT_ERRNO, SCMP_ACT_KILL, SCMP_ACT_KILL_THREAD, SCMP_ACT_KILL_PROCESS, "
     "SCMP_ACT_TRAP, SCMP_ACT_TRACE, SCMP_ACT_LOG"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_NOTIFY"}]},
     "asks for SCMP_ACT_NOTIFY in syscalls entry 1, which needs a supervisor process this "
     "runner does not provide; use SCMP_ACT_ERRNO or SCMP_ACT_KILL_PROCESS instead"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"], "action":
      "SCMP_ACT_ERRNO", "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
     "has args index 7 in syscalls entry 1; a syscall has args 0 to 5"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"], "action":
      "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]},
     "has the unknown args op 'SCMP_CMP_ABOUT' in syscalls entry 1; use one of SCMP_CMP_EQ, "
     "SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_GT, SCMP_CMP_GE, SCMP_CMP_MASKED_EQ"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"], "action":
      "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]},
     "has an args value in syscalls entry 1 that is not an unsigned 64-bit number"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5000},
     "has errnoRet 5000 as defaultAction; use 0 to 4095"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]},
     "names the unknown architecture 'SCMP_ARCH_Z80'; use libseccomp's names, e.g. "
     f"{MACHINES.get(MACHINE, (0, 'SCMP_ARCH_X86_64'))[1]}"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]},
     'has no syscall names in syscalls entry 1; give "names": [...]'),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"], "action":
      "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]},
     "has minKernel 'new' in syscalls entry 1; write it as MAJOR.MINOR, e.g. \"4.8\""),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"], "action":
      "SCMP_ACT_ALLOW", "excludes": {"caps": "CAP_SYS_ADMIN"}}]},
     "has excludes.caps in syscalls entry 1 that is not a list of names"),
]


@pytest.mark.parametrize(("content", "message"), BAD, ids=[m.split(";")[0][:40] for _, m in BAD])
def test_malformed_profile_is_one_sentence(tmp_path: Path, content: object, message: str) -> None:
    path = _profile(tmp_path, content)
    with pytest.raises(SeccompProfileError) as caught:
        _seccomp.load(path)
    assert str(caught.value) == f"the seccomp profile {path} {message}"
    assert isinstance(caught.value, NamespaceError)


def test_unreadable_or_odd_profile_paths_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(SeccompProfileError) as caught:
        _seccomp.load("")
    assert str(caught.value) == (
        'no seccomp profile given; use "default", "unconfined" or the path of a Docker-format '
        "JSON profile"
    )
    missing = tmp_path / "missing.json"
    with pytest.raises(SeccompProfileError) as caught:
        _seccomp.load(str(missing))
    assert str(caught.value) == (
        f"cannot read the seccomp profile {missing}: No such file or directory; give the path "
        'of a Docker-format JSON profile, or "default" or "unconfined"'
    )
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # opened without blocking, then refused
    with pytest.raises(SeccompProfileError) as caught:
        _seccomp.load(str(fifo))
    assert str(caught.value) == (
        f"the seccomp profile {fifo} is not a regular file; give a JSON file"
    )


def test_a_profile_that_is_no_regular_file_is_never_opened(tmp_path: Path) -> None:
    # A link planted where the profile is read (to /dev/watchdog, a tape, a FIFO a writer
    # waits on): opening a device or FIFO acts on it, so it is judged before it is opened.
    # inotify reports every real open (IN_OPEN), and none of an O_PATH descriptor.
    import ctypes

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    planted = tmp_path / "profile.json"
    planted.symlink_to(fifo)
    libc = ctypes.CDLL(None, use_errno=True)
    watch = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert watch >= 0 and libc.inotify_add_watch(watch, bytes(fifo), 0x20) >= 0  # IN_OPEN
    try:
        with pytest.raises(SeccompProfileError, match="is not a regular file"):
            _seccomp.load(str(planted))
        with pytest.raises(BlockingIOError):
            os.read(watch, 4096)  # no event: it was never opened
    finally:
        os.close(watch)


def test_profile_too_large_for_the_kernel_is_one_sentence(tmp_path: Path) -> None:
    rules = [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
              "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}]} for v in range(1100)]
    path = _profile(tmp_path, {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})
    with pytest.raises(SeccompProfileError) as caught:
        _seccomp.load(path)
    count = str(caught.value).split(" compiles to ")[1].split()[0]
    assert int(count) > 4096
    assert str(caught.value) == (
        f"the seccomp profile {path} compiles to {count} BPF instructions, more than the "
        "kernel's 4096; merge rules that share an action"
    )


def test_default_denied_names_what_the_filter_refuses() -> None:
    assert {"keyctl", "bpf", "unshare", "mount", "ptrace", "open_by_handle_at"} <= set(
        _seccomp.DEFAULT_DENIED
    )
    calls = [[NR[n], U64, U64, U64, U64, U64, U64] for n in _seccomp.DEFAULT_DENIED if n in NR]
    # (not called before the filter: with these arguments some would act, vhangup at least)
    _, after = _probe("default", calls, before=False)
    assert after == [errno.EPERM] * len(calls)
