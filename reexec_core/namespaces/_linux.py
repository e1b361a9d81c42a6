"""Raw Linux calls for namespaces, and the one place where their errno becomes a typed error.

``unshare(2)``, ``setns(2)``, ``mount(2)``, ``umount2(2)``, ``pivot_root(2)``,
``sethostname(2)``, ``mount_setattr(2)`` and ``pidfd_open(2)``; uid/gid map files; bringing
``lo`` up. Python 3.12+ has ``os.unshare``/``os.setns``; everything else (and those two on 3.11)
goes through libc, called via the raw ``_ctypes`` extension: ``import ctypes`` costs several
milliseconds at every start (see ``reexec_core._prctl``), ``_ctypes`` about one.

Every kernel refusal is turned into a :class:`NamespaceError` leaf by :func:`error_for`, whose
message says in one sentence what the cause is and which knob (sysctl, kernel option,
privilege) changes it. The same function serves errors raised here and errors a forked or
re-executed helper reports back to the runner as ``(operation, errno, detail)``.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # mypy treats this name as True; importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

__all__ = [
    "CLONE_FLAGS",
    "IdMapError",
    "JoinError",
    "MountError",
    "NamespaceError",
    "NamespaceLimitError",
    "NamespacePermissionError",
    "NamespaceSetupError",
    "NamespaceUnsupportedError",
    "ThreadedCallerError",
    "error_for",
    "flags_for",
    "kernel_namespaces",
    "mount",
    "names_for",
    "pidfd_open",
    "pivot_root",
    "set_loopback_up",
    "sethostname",
    "setns",
    "umount2",
    "unshare",
]

# linux/sched.h
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

#: Namespace name (as on the command line) -> (clone flag, name of the /proc/PID/ns entry).
#: In the order the runner documents them; ``user`` first because it owns the others.
CLONE_FLAGS: dict[str, tuple[int, str]] = {
    "user": (CLONE_NEWUSER, "user"),
    "pid": (CLONE_NEWPID, "pid"),
    "mount": (CLONE_NEWNS, "mnt"),
    "net": (CLONE_NEWNET, "net"),
    "uts": (CLONE_NEWUTS, "uts"),
    "ipc": (CLONE_NEWIPC, "ipc"),
    "cgroup": (CLONE_NEWCGROUP, "cgroup"),
    "time": (CLONE_NEWTIME, "time"),
}

# linux/mount.h
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MNT_DETACH = 0x2
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

# Syscalls glibc 2.36 has no wrapper for (asm/unistd_64.h; generic table for arm64/riscv).
_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {"pivot_root": 155, "pidfd_open": 434, "clone3": 435, "mount_setattr": 442},
    "aarch64": {"pivot_root": 41, "pidfd_open": 434, "clone3": 435, "mount_setattr": 442},
    "riscv64": {"pivot_root": 41, "pidfd_open": 434, "clone3": 435, "mount_setattr": 442},
}

_EPERM, _ENOENT, _ENOSYS, _EINVAL, _ENOSPC, _EUSERS = 1, 2, 38, 22, 28, 87


# --------------------------------------------------------------------------------------------
# The exception hierarchy (re-exported by reexec_core.namespaces)


class NamespaceError(Exception):
    """Base of every namespace failure: the kernel or the system refused, not a caller bug.

    ``str(error)`` is one sentence that says what went wrong and what to change.

    Attributes:
        errno: the kernel's errno, or 0 when the failure was not a system call.
        operation: what was being done (``"unshare"``, ``"mount"``, ``"uid_map"``, ...).
    """

    def __init__(self, message: str, errno: int = 0, operation: str = "") -> None:
        super().__init__(message)
        self.errno = errno
        self.operation = operation


class NamespaceLimitError(NamespaceError):
    """ENOSPC/EUSERS: a ``user.max_*_namespaces`` limit (or the nesting depth) is reached."""


class NamespacePermissionError(NamespaceError):
    """EPERM: a policy (seccomp, AppArmor, a sysctl) or a missing privilege forbids it."""


class NamespaceUnsupportedError(NamespaceError):
    """The kernel has no such namespace type (built without its CONFIG_*_NS), or not Linux."""


class ThreadedCallerError(NamespaceError):
    """EINVAL: user/mount namespaces cannot be entered by a process with several threads."""


class MountError(NamespaceError):
    """A mount, bind, tmpfs or ``pivot_root`` inside the new mount namespace failed."""


class IdMapError(NamespaceError):
    """Writing the uid/gid map failed (newuidmap missing, no /etc/subuid range, refused)."""


class JoinError(NamespaceError):
    """Joining a running process's namespaces failed (gone, not permitted, unsupported)."""


class NamespaceSetupError(NamespaceError):
    """Another step of setting up the namespaces failed (hostname, loopback, exec)."""


class CommandError(NamespaceError):
    """The command could not be started inside (not found: errno ENOENT; not executable)."""


# --------------------------------------------------------------------------------------------
# errno -> typed error, with the knob that changes the answer


def names_for(flags: int) -> list[str]:
    """Return the namespace names whose clone flags are set in ``flags``, in canonical order."""
    return [name for name, (flag, _) in CLONE_FLAGS.items() if flags & flag]


def flags_for(names: Iterable[str]) -> int:
    """Return the clone flags for namespace names; ValueError for an unknown name."""
    flags = 0
    for name in names:
        try:
            flags |= CLONE_FLAGS[name][0]
        except KeyError:
            known = ", ".join(CLONE_FLAGS)
            raise ValueError(f"unknown namespace {name!r} (known: {known})") from None
    return flags


def kernel_namespaces() -> list[str]:
    """Return the namespace types this kernel has (those with a ``/proc/self/ns`` entry)."""
    try:
        present = set(os.listdir("/proc/self/ns"))
    except OSError:
        return []
    return [name for name, (_, entry) in CLONE_FLAGS.items() if entry in present]


def _read_sysctl(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode().strip()
    except OSError:
        return None


def thread_count() -> int:
    """Return how many threads this process has (from ``/proc/self/task``)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _userns_policy() -> str:
    """Name the policy that most likely refused an unprivileged user namespace, and its knob."""
    if _read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return (
            "AppArmor restricts unprivileged user namespaces "
            "(sysctl kernel.apparmor_restrict_unprivileged_userns=1; set it to 0 or give this "
            "program an AppArmor profile with the 'userns' permission)"
        )
    if _read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return (
            "unprivileged user namespaces are disabled "
            "(sysctl kernel.unprivileged_userns_clone=0; set it to 1)"
        )
    seccomp = "0"
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Seccomp:"):
                    seccomp = line.split()[1].decode()
    except OSError:
        pass
    if seccomp != "0":
        return (
            "a seccomp filter forbids it (containers' default profiles do: run the container "
            "with a profile that allows unshare/clone with CLONE_NEWUSER, e.g. "
            "--security-opt seccomp=unconfined)"
        )
    return (
        "a security policy forbids it (a seccomp filter, AppArmor's "
        "kernel.apparmor_restrict_unprivileged_userns, kernel.unprivileged_userns_clone=0, "
        "or a chroot, in which the kernel refuses user namespaces)"
    )


def error_for(
    operation: str, errno: int, flags: int = 0, detail: str = "", threads: int = 1
) -> NamespaceError:
    """Turn a refused call into the typed error whose message names the cause and the knob.

    Args:
        operation: ``"unshare"``, ``"setns"``, ``"mount"``, ``"pivot_root"``, ``"uid_map"``,
            ``"gid_map"``, ``"sethostname"``, ``"loopback"``, ``"exec"``, ...
        errno: the errno the kernel returned.
        flags: for unshare/setns, the clone flags that were asked for.
        detail: what the operation was applied to (a path, a command, a namespace list).
        threads: how many threads the calling process had.

    Returns:
        The error to raise (never raises itself).
    """
    what = ", ".join(names_for(flags)) or "no"
    reason = os.strerror(errno) if errno else ""
    if operation in ("unshare", "setns"):
        verb = "create" if operation == "unshare" else "join"
        subject = f"the {what} namespace{'s' if len(names_for(flags)) != 1 else ''}"
        if operation == "setns" and detail:
            subject += f" of {detail}"
        missing = [n for n in names_for(flags) if n not in kernel_namespaces()]
        if missing or errno == _ENOSYS:
            kinds = ", ".join(missing) or what
            cls: type[NamespaceError] = (
                JoinError if operation == "setns" else NamespaceUnsupportedError
            )
            return cls(
                f"cannot {verb} {subject}: this kernel has no {kinds} namespaces (it was built "
                f"without CONFIG_{(missing or ['USER'])[0].upper()}_NS, or is too old); "
                f"leave {kinds} out of the namespace list",
                errno,
                operation,
            )
        if errno == _EINVAL and threads > 1 and flags & (CLONE_NEWUSER | CLONE_NEWNS):
            return ThreadedCallerError(
                f"cannot {verb} {subject}: the kernel refuses user and mount namespaces to a "
                f"process with more than one thread (this one has {threads}); call it before "
                "starting threads, or use namespaces.run()/run_entry(), which enter them in a "
                "fresh single-threaded process",
                errno,
                operation,
            )
        if errno in (_ENOSPC, _EUSERS):
            limits = []
            for name in names_for(flags) or ["user"]:
                knob = f"user.max_{name}_namespaces"
                value = _read_sysctl(f"/proc/sys/user/max_{name}_namespaces")
                if value is not None:
                    limits.append((value == "0", knob, value))
            zero = [(knob, value) for is_zero, knob, value in limits if is_zero]
            if zero:
                knob, value = zero[0]
                why = f"the sysctl {knob} is {value} here"
            else:
                knobs = " or ".join(sorted({knob for _, knob, _ in limits})) or (
                    "user.max_user_namespaces"
                )
                why = f"the limit {knobs} is reached (or namespaces are nested 32 deep)"
            return NamespaceLimitError(
                f"cannot {verb} {subject}: {why}; raise it with "
                f"`sysctl -w {zero[0][0] if zero else 'user.max_user_namespaces'}=15000` "
                "(as root, in the namespace that sets the limit)",
                errno,
                operation,
            )
        if errno == _EPERM:
            if operation == "unshare" and flags & CLONE_NEWUSER:
                return NamespacePermissionError(
                    f"cannot create {subject}: the kernel refused the user namespace (EPERM): "
                    f"{_userns_policy()}",
                    errno,
                    operation,
                )
            if operation == "unshare":
                return NamespacePermissionError(
                    f"cannot create {subject}: without a user namespace this needs "
                    "CAP_SYS_ADMIN; run as root or add 'user' to the namespace list",
                    errno,
                    operation,
                )
            return JoinError(
                f"cannot join {subject}: not permitted (EPERM); join as the user that created "
                "them or as root",
                errno,
                operation,
            )
        if operation == "setns":
            return JoinError(f"cannot join {subject}: {reason}", errno, operation)
        return NamespaceError(f"cannot {verb} {subject}: {reason}", errno, operation)
    if operation in ("mount", "bind", "ro-bind", "tmpfs", "proc", "pivot_root", "private"):
        hint = {
            _ENOENT: "the source or mount point does not exist",
            _EPERM: "not permitted (a locked mount, or no mount namespace of our own)",
        }.get(errno, reason)
        verb = {
            "private": "make the mounts below",
            "bind": "bind-mount",
            "ro-bind": "bind-mount",
            "tmpfs": "mount a tmpfs on",
            "proc": "mount a fresh proc on",
            "pivot_root": "pivot_root into",
        }.get(operation, operation)
        text = f"cannot {verb} {detail}"
        return MountError(f"{text}: {hint}" if errno else text, errno, operation)
    if operation in ("uid_map", "gid_map", "setgroups"):
        return IdMapError(f"cannot write the {operation} {detail}: {reason}", errno, operation)
    if operation == "exec":
        if errno == _ENOENT:
            reason = "command not found (not on PATH, or no such file inside the namespaces)"
        elif errno == 13:
            reason = "permission denied (not executable, or on a noexec mount)"
        return CommandError(f"cannot run {detail}: {reason}", errno, operation)
    if operation in ("join", "pidfd_open"):
        return JoinError(f"cannot join {detail}: {reason}", errno, operation)
    text = " ".join(x for x in (f"cannot {operation}", detail) if x)
    return NamespaceSetupError(f"{text}: {reason}" if reason else text, errno, operation)


# --------------------------------------------------------------------------------------------
# libc via _ctypes

_libc: dict[str, object] = {}


class _CTypes:
    """The few C types needed, built on the raw ``_ctypes`` module (no ``ctypes`` import)."""

    def __init__(self) -> None:
        import _ctypes

        ct: Any = _ctypes
        simple, func = ct._SimpleCData, ct.CFuncPtr
        flags = ct.FUNCFLAG_CDECL | ct.FUNCFLAG_USE_ERRNO
        self.mod: Any = ct
        self.c_int: Any = type("c_int", (simple,), {"_type_": "i"})
        self.c_long: Any = type("c_long", (simple,), {"_type_": "l"})
        self.c_ulong: Any = type("c_ulong", (simple,), {"_type_": "L"})
        self.c_char_p: Any = type("c_char_p", (simple,), {"_type_": "z"})
        int_func = type("IntFunc", (func,), {"_flags_": flags, "_restype_": self.c_int})
        long_func = type("LongFunc", (func,), {"_flags_": flags, "_restype_": self.c_long})
        # dlopen(NULL) is the main program; libc's symbols are reachable from it.
        handle = ct.dlopen(None, os.RTLD_NOW)
        self.int_funcs: dict[str, Any] = {
            name: int_func(ct.dlsym(handle, name))
            for name in ("unshare", "setns", "mount", "umount2", "sethostname")
        }
        self.syscall: Any = long_func(ct.dlsym(handle, "syscall"))
        # socket/ioctl/close for bringing lo up: cheaper than importing _socket and fcntl
        # in every setup process (~1 ms).
        for name in ("socket", "ioctl", "close", "prctl"):
            self.int_funcs[name] = int_func(ct.dlsym(handle, name))
        c_char = type("c_char", (simple,), {"_type_": "c"})
        self.ifreq: Any = type("ifreq", (ct.Array,), {"_type_": c_char, "_length_": 40})
        # Arguments built once, here, before any fork or clone: a child that only uses them
        # writes (copies) fewer pages of the parent's memory.
        self.pdeathsig: dict[int, tuple[Any, ...]] = {}
        self.lo_socket = (self.c_int(2), self.c_int(2), self.c_int(0))  # AF_INET, SOCK_DGRAM
        self.lo_get = self.c_ulong(0x8913)  # SIOCGIFFLAGS
        self.lo_set = self.c_ulong(0x8914)  # SIOCSIFFLAGS
        self.lo_ifreq: Any = self.ifreq()
        self.lo_ifreq[0], self.lo_ifreq[1] = b"l", b"o"


_ct: _CTypes | None = None


def _c() -> _CTypes:
    global _ct
    if _ct is None:
        if sys.platform != "linux":
            raise NamespaceUnsupportedError(
                f"Linux namespaces are not available on {sys.platform}; run this on Linux",
                _ENOSYS,
                "load",
            )
        _ct = _CTypes()
    return _ct


def preload() -> None:
    """Load the libc entry points and build their arguments now, before forking or cloning.

    Raises:
        NamespaceUnsupportedError: not Linux.
    """
    _c()


def _check(rc: int, c: _CTypes) -> int:
    if rc == -1:
        err: int = c.mod.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def _call(name: str, *args: object) -> int:
    c = _c()
    c.mod.set_errno(0)
    rc: int = c.int_funcs[name](*args)
    return _check(rc, c)


def _syscall(name: str, *args: int | bytes | None) -> int:
    c = _c()
    machine = os.uname().machine
    try:
        nr = _SYSCALLS[machine][name]
    except KeyError:
        raise OSError(_ENOSYS, f"{name} is not known on {machine}") from None
    # syscall(2) is variadic and reads longs: pass explicit C types, never bare ints.
    cargs = [c.c_long(a) if isinstance(a, int) else c.c_char_p(a) for a in args]
    rc: int = c.syscall(c.c_long(nr), *cargs)
    return _check(rc, c)


def _b(path: str | bytes | os.PathLike[str] | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


# --------------------------------------------------------------------------------------------
# The raw calls. They raise OSError; callers turn it into a typed error with error_for().


def unshare_raw(flags: int) -> None:
    """``unshare(flags)``; OSError on failure."""
    if hasattr(os, "unshare"):  # Python 3.12+
        os.unshare(flags)
    else:
        c = _c()
        _call("unshare", c.c_int(flags))


def setns_raw(fd: int, nstype: int = 0) -> None:
    """``setns(fd, nstype)`` (fd: a /proc/PID/ns/* file or a pidfd); OSError on failure."""
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, nstype)
    else:
        c = _c()
        _call("setns", c.c_int(fd), c.c_int(nstype))


def clone3(flags: int) -> int:
    """``clone3(2)`` like ``fork()``, the child created inside new namespaces at once.

    The child gets a copy of this process (no ``CLONE_VM``, no new stack: it returns from this
    call, with 0) and is, with ``CLONE_NEWPID``, PID 1 of the new PID namespace; clone3 also
    takes ``CLONE_NEWTIME``, which ``clone(2)`` cannot. Only for a single-threaded caller, and
    the child must end with ``os._exit`` or an exec: Python's own at-fork bookkeeping does not
    run (it needs none with one thread), and ``os.fork`` would cost one more process to get
    the same, the child of an ``unshare``.

    The C arguments are built once per set of flags: the child returns through as little
    Python as possible (every page it writes is a copy-on-write fault).

    Returns:
        The child's pid in the parent; 0 in the child.

    Raises:
        OSError: the kernel refused (errno as for unshare; ENOSYS: no clone3 here).
    """
    args = _clone_args.get(flags)
    if args is None:
        import struct

        c = _c()
        machine = os.uname().machine
        try:
            nr = _SYSCALLS[machine]["clone3"]
        except KeyError:
            raise OSError(_ENOSYS, f"clone3 is not known on {machine}") from None
        # struct clone_args, CLONE_ARGS_SIZE_VER0: flags, pidfd, child_tid, parent_tid,
        # exit_signal, stack, stack_size, tls. stack 0: the child runs on a copy of our stack.
        raw = struct.pack("=8Q", flags, 0, 0, 0, 17, 0, 0, 0)  # exit_signal SIGCHLD
        args = _clone_args[flags] = (c.c_long(nr), c.c_char_p(raw), c.c_long(len(raw)))
    c = _c()
    rc: int = c.syscall(*args)
    if rc == -1:
        err: int = c.mod.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


_clone_args: dict[int, tuple[object, ...]] = {}


def unshare(flags: int) -> None:
    """Move this process into new namespaces (``unshare(2)``); PID and time apply to children.

    Raises:
        NamespaceError: a typed leaf naming the cause and the knob that changes it.
    """
    try:
        unshare_raw(flags)
    except OSError as e:
        raise error_for("unshare", e.errno or 0, flags, threads=thread_count()) from e


def setns(fd: int, nstype: int = 0, target: str = "") -> None:
    """Join the namespace(s) ``fd`` refers to (``setns(2)``).

    Raises:
        NamespaceError: a typed leaf (JoinError, ThreadedCallerError, ...).
    """
    try:
        setns_raw(fd, nstype)
    except OSError as e:
        raise error_for("setns", e.errno or 0, nstype, target, thread_count()) from e


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    """``mount(2)``; OSError on failure."""
    c = _c()
    _call(
        "mount",
        c.c_char_p(_b(source)),
        c.c_char_p(_b(target)),
        c.c_char_p(_b(fstype)),
        c.c_ulong(flags),
        c.c_char_p(_b(data)),
    )


def umount2(target: str, flags: int = 0) -> None:
    """``umount2(2)``; OSError on failure."""
    c = _c()
    _call("umount2", c.c_char_p(_b(target)), c.c_int(flags))


def pivot_root(new_root: str, put_old: str) -> None:
    """``pivot_root(2)`` (no glibc wrapper: a raw syscall); OSError on failure."""
    _syscall("pivot_root", _b(new_root), _b(put_old))


def sethostname(name: str) -> None:
    """``sethostname(2)`` in this process's UTS namespace; OSError on failure."""
    c = _c()
    raw = name.encode()
    _call("sethostname", c.c_char_p(raw), c.c_ulong(len(raw)))


def pidfd_open(pid: int) -> int:
    """Return a pidfd for ``pid`` (``os.pidfd_open`` where Python has it); OSError on failure."""
    if hasattr(os, "pidfd_open"):
        return os.pidfd_open(pid)
    return _syscall("pidfd_open", pid, 0)


def make_readonly(target: str) -> None:
    """Make the mount at ``target`` and every mount below it read-only.

    ``mount_setattr(2)`` with ``AT_RECURSIVE`` (Linux 5.12+) does it in one call and keeps the
    flags a user namespace may not clear (nosuid, nodev, ... are "locked"); older kernels get
    a remount of the top mount, carrying those flags over from ``statvfs``.
    """
    import struct

    attr = struct.pack("=QQQQ", MOUNT_ATTR_RDONLY, 0, 0, 0)  # struct mount_attr
    try:
        _syscall("mount_setattr", AT_FDCWD, _b(target), AT_RECURSIVE, attr, len(attr))
        return
    except OSError as e:
        if e.errno != _ENOSYS:
            raise
    st = os.statvfs(target)
    keep = 0
    for st_flag, ms_flag in (
        (os.ST_NOSUID, MS_NOSUID),
        (os.ST_NODEV, MS_NODEV),
        (os.ST_NOEXEC, MS_NOEXEC),
        (os.ST_NOATIME, MS_NOATIME),
        (os.ST_NODIRATIME, MS_NODIRATIME),
        (os.ST_RELATIME, MS_RELATIME),
    ):
        if st.f_flag & st_flag:
            keep |= ms_flag
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | keep)


def set_pdeathsig(sig: int) -> None:
    """``prctl(PR_SET_PDEATHSIG, sig)`` through the preloaded libc (see ``preload``)."""
    c = _c()
    args = c.pdeathsig.get(sig)
    if args is None:
        zero = c.c_ulong(0)
        args = c.pdeathsig[sig] = (c.c_int(1), c.c_ulong(sig), zero, zero, zero)
    if c.int_funcs["prctl"](*args) == -1:
        err: int = c.mod.get_errno()
        raise OSError(err, os.strerror(err))


def set_loopback_up() -> None:
    """Bring ``lo`` up in this network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS; no ``ip`` needed).

    The C arguments are built by ``preload`` (before a fork or clone: fewer pages written in
    the child).

    Raises:
        OSError: the ioctl failed (for example without CAP_NET_ADMIN in the namespace).
    """
    c = _c()
    funcs = c.int_funcs
    fd = funcs["socket"](*c.lo_socket)  # AF_INET, SOCK_DGRAM
    if fd == -1:
        err: int = c.mod.get_errno()
        raise OSError(err, os.strerror(err))
    try:
        # struct ifreq: 16 bytes of name, then a union whose first short is ifr_flags.
        req = c.lo_ifreq
        cfd = c.c_int(fd)
        if funcs["ioctl"](cfd, c.lo_get, req) == -1:
            err = c.mod.get_errno()
            raise OSError(err, os.strerror(err))
        flags = int.from_bytes(req.raw[16:18], sys.byteorder) | 0x1  # IFF_UP
        req[16:18] = flags.to_bytes(2, sys.byteorder)
        if funcs["ioctl"](cfd, c.lo_set, req) == -1:
            err = c.mod.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        funcs["close"](c.c_int(fd))


def write_id_maps(
    pid: int | str,
    uid_map: Sequence[tuple[int, int, int]],
    gid_map: Sequence[tuple[int, int, int]],
    deny_setgroups: bool,
) -> None:
    """Write ``/proc/PID/{setgroups,uid_map,gid_map}`` (``pid`` may be ``"self"``).

    The kernel's rules (user_namespaces(7)): a process may write one line mapping its own id
    into its own map, and for the gid map only after ``deny`` is in ``setgroups``; anything
    else must be written by a process with CAP_SETUID/CAP_SETGID in the parent namespace.

    Raises:
        OSError: with ``filename`` set to the file that was refused.
    """
    write_files(id_map_files(pid, uid_map, gid_map, deny_setgroups))


def id_map_files(
    pid: int | str,
    uid_map: Sequence[tuple[int, int, int]],
    gid_map: Sequence[tuple[int, int, int]],
    deny_setgroups: bool,
) -> list[tuple[str, bytes, bytes]]:
    """The writes of :func:`write_id_maps` as ``(name, path, data)``, to do with ``write_files``."""
    base = f"/proc/{pid}/"
    items: list[tuple[str, bytes]] = []
    if deny_setgroups:
        items.append(("setgroups", b"deny"))
    items.append(("uid_map", _map_text(uid_map)))
    items.append(("gid_map", _map_text(gid_map)))
    return [(name, os.fsencode(base + name), data) for name, data in items]


def write_files(items: Sequence[tuple[str, bytes, bytes]]) -> None:
    """Write each ``data`` to its ``path`` (one ``write``); OSError with ``filename`` = name."""
    for name, path, data in items:
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            e.filename = name
            raise


def _map_text(entries: Sequence[tuple[int, int, int]]) -> bytes:
    return "".join(f"{a} {b} {n}\n" for a, b, n in entries).encode()
