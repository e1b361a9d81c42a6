"""Raw Linux calls for namespaces: flags, the calls themselves, uid/gid maps, ``lo`` up.

``unshare(2)``, ``setns(2)``, ``clone3(2)``, ``mount(2)``, ``umount2(2)``, ``pivot_root(2)``,
``sethostname(2)``, ``mount_setattr(2)``, ``openat2(2)``, ``pidfd_open(2)`` and ``prctl(2)``;
uid/gid map files; bringing ``lo`` up. Python 3.12+ has ``os.unshare``/``os.setns``;
everything else (and those two on 3.11) goes through libc, loaded by ``reexec_core._libc``.

The calls raise ``OSError``; turning its errno into a typed error with a sentence that names
the cause is ``errors.error_for``'s job, done by the caller (the runner, or the runner on behalf
of a setup process that reported it, see ``_wire``).
"""

from __future__ import annotations

import os
import sys
from errno import ENOSYS

from reexec_core import _libc

TYPE_CHECKING = False  # mypy treats this name as True; importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

__all__ = [
    "CLONE_FLAGS",
    "clone3",
    "flags_for",
    "kernel_namespaces",
    "make_readonly",
    "mount",
    "openat2_in_root",
    "set_child_subreaper",
    "set_comm",
    "set_undumpable",
    "names_for",
    "pidfd_open",
    "pivot_root",
    "preload",
    "set_loopback_up",
    "set_pdeathsig",
    "sethostname",
    "setns_raw",
    "thread_count",
    "umount2",
    "unshare_raw",
    "write_id_maps",
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
    arch: {
        "pivot_root": pivot,
        "pidfd_open": 434,
        "clone3": 435,
        "openat2": 437,
        "mount_setattr": 442,
    }
    for arch, pivot in (("x86_64", 155), ("aarch64", 41), ("riscv64", 41))
}

# linux/prctl.h
_PR_GET_DUMPABLE, _PR_SET_DUMPABLE, _PR_SET_NAME, _PR_SET_CHILD_SUBREAPER = 3, 4, 15, 36
# linux/openat2.h
_RESOLVE_NO_MAGICLINKS, _RESOLVE_IN_ROOT = 0x02, 0x10

_SIGKILL = 9
# linux/socket.h, linux/sockios.h, linux/if.h: for bringing lo up without ip(8).
_AF_INET, _SOCK_DGRAM = 2, 2
_SIOCGIFFLAGS, _SIOCSIFFLAGS = 0x8913, 0x8914
_IFF_UP = 0x1


# --------------------------------------------------------------------------------------------
# Namespace names and flags


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


def thread_count() -> int:
    """Return how many threads this process has (from ``/proc/self/task``)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


# --------------------------------------------------------------------------------------------
# libc, and the C arguments built before a fork or clone


class _Prepared:
    """Arguments built once, in the runner, before any fork or clone: a child that only uses
    them writes (copies) fewer pages of the parent's memory."""

    def __init__(self, lib: _libc.Libc) -> None:
        # Look the functions up now, for the same reason. socket/ioctl/close bring lo up:
        # cheaper than importing _socket and fcntl in every setup process (~1 ms).
        for name in ("unshare", "setns", "mount", "umount2", "sethostname", "prctl"):
            lib.func(name)
        self.syscall: Any = lib.func("syscall", "long")
        self.socket: Any = lib.func("socket")
        self.ioctl: Any = lib.func("ioctl")
        self.close: Any = lib.func("close")
        _libc.pdeathsig_args(_SIGKILL)
        self.lo_socket = (lib.c_int(_AF_INET), lib.c_int(_SOCK_DGRAM), lib.c_int(0))
        self.lo_get = lib.c_ulong(_SIOCGIFFLAGS)
        self.lo_set = lib.c_ulong(_SIOCSIFFLAGS)
        ifreq = type("ifreq", (lib.Array,), {"_type_": lib.c_char, "_length_": 40})
        self.lo_ifreq: Any = ifreq()
        self.lo_ifreq[0], self.lo_ifreq[1] = b"l", b"o"
        zero = lib.c_ulong(0)
        self.undumpable = (lib.c_int(_PR_SET_DUMPABLE), zero, zero, zero, zero)
        self.get_dumpable = (lib.c_int(_PR_GET_DUMPABLE), zero, zero, zero, zero)
        self.subreaper = (lib.c_int(_PR_SET_CHILD_SUBREAPER), lib.c_ulong(1), zero, zero, zero)


_prepared: _Prepared | None = None


def _lib() -> _libc.Libc:
    """Return libc, with the arguments of :class:`_Prepared` built (see :func:`preload`)."""
    global _prepared
    if _prepared is None:
        _prepared = _Prepared(_libc.libc())
    return _libc.libc()


def preload() -> None:
    """Load the libc entry points and build their arguments now, before forking or cloning.

    Raises:
        OSError: libc lacks one of them (not Linux: see ``errors.require_linux``).
    """
    _lib()


def _syscall(name: str, *args: int | bytes | None) -> int:
    lib = _lib()
    machine = os.uname().machine
    try:
        nr = _SYSCALLS[machine][name]
    except KeyError:
        raise OSError(ENOSYS, f"{name} is not known on {machine}") from None
    # syscall(2) is variadic and reads longs: pass explicit C types, never bare ints.
    cargs = [lib.c_long(a) if isinstance(a, int) else lib.c_char_p(a) for a in args]
    rc: int = lib.func("syscall", "long")(lib.c_long(nr), *cargs)
    return _libc.check(rc)


def _b(path: str | bytes | os.PathLike[str] | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


# --------------------------------------------------------------------------------------------
# The raw calls. They raise OSError; callers turn it into a typed error with errors.error_for.

# Python 3.12+ has these (Python's own wrappers); 3.11 goes through libc. The names are looked
# up here, once, so that a test can force the libc path on 3.12+ too (set them to None).
_os_unshare = getattr(os, "unshare", None)
_os_setns = getattr(os, "setns", None)


def unshare_raw(flags: int) -> None:
    """``unshare(flags)``; OSError on failure."""
    if _os_unshare is not None:
        _os_unshare(flags)
    else:
        lib = _lib()
        _libc.call("unshare", lib.c_int(flags))


def setns_raw(fd: int, nstype: int = 0) -> None:
    """``setns(fd, nstype)`` (fd: a /proc/PID/ns/* file or a pidfd); OSError on failure."""
    if _os_setns is not None:
        _os_setns(fd, nstype)
    else:
        lib = _lib()
        _libc.call("setns", lib.c_int(fd), lib.c_int(nstype))


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

        lib = _lib()
        machine = os.uname().machine
        try:
            nr = _SYSCALLS[machine]["clone3"]
        except KeyError:
            raise OSError(ENOSYS, f"clone3 is not known on {machine}") from None
        # struct clone_args, CLONE_ARGS_SIZE_VER0: flags, pidfd, child_tid, parent_tid,
        # exit_signal, stack, stack_size, tls. stack 0: the child runs on a copy of our stack.
        raw = struct.pack("=8Q", flags, 0, 0, 0, 17, 0, 0, 0)  # exit_signal SIGCHLD
        args = _clone_args[flags] = (lib.c_long(nr), lib.c_char_p(raw), lib.c_long(len(raw)))
    assert _prepared is not None
    rc: int = _prepared.syscall(*args)
    return _libc.check(rc)


_clone_args: dict[int, tuple[object, ...]] = {}


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    """``mount(2)``; OSError on failure."""
    lib = _lib()
    _libc.call(
        "mount",
        lib.c_char_p(_b(source)),
        lib.c_char_p(_b(target)),
        lib.c_char_p(_b(fstype)),
        lib.c_ulong(flags),
        lib.c_char_p(_b(data)),
    )


def umount2(target: str, flags: int = 0) -> None:
    """``umount2(2)``; OSError on failure."""
    lib = _lib()
    _libc.call("umount2", lib.c_char_p(_b(target)), lib.c_int(flags))


def pivot_root(new_root: str, put_old: str) -> None:
    """``pivot_root(2)`` (no glibc wrapper: a raw syscall); OSError on failure."""
    _syscall("pivot_root", _b(new_root), _b(put_old))


def sethostname(name: str) -> None:
    """``sethostname(2)`` in this process's UTS namespace; OSError on failure."""
    lib = _lib()
    raw = name.encode()
    _libc.call("sethostname", lib.c_char_p(raw), lib.c_ulong(len(raw)))


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
        if e.errno != ENOSYS:
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
    """``prctl(PR_SET_PDEATHSIG, sig)`` with the arguments :func:`preload` built."""
    _libc.call("prctl", *_libc.pdeathsig_args(sig))


def set_undumpable() -> None:
    """``prctl(PR_SET_DUMPABLE, 0)``, checked with ``PR_GET_DUMPABLE``.

    A process that is not dumpable can be inspected (``/proc/PID/mem``, ``fd/``, ``environ``,
    ptrace) only with CAP_SYS_PTRACE in the user namespace its memory belongs to: for a copy
    of the caller that never exec'd, the caller's namespace, where a workload inside a new
    user namespace has no capability at all (ptrace(2), "Ptrace access mode checking").

    Raises:
        OSError: the kernel refused, or the flag did not stick.
    """
    _lib()
    assert _prepared is not None
    _libc.call("prctl", *_prepared.undumpable)
    if _libc.call("prctl", *_prepared.get_dumpable) != 0:
        raise OSError(0, "PR_SET_DUMPABLE 0 did not stick")


def set_comm(name: bytes) -> None:
    """``prctl(PR_SET_NAME, name)``: what ``ps`` shows. Unlike writing ``/proc/self/comm`` it
    works in a non-dumpable process too (whose ``/proc`` files then belong to root).

    Raises:
        OSError: the kernel refused.
    """
    lib = _lib()
    zero = lib.c_ulong(0)
    _libc.call("prctl", lib.c_int(_PR_SET_NAME), lib.c_char_p(name[:15]), zero, zero, zero)


def set_child_subreaper() -> None:
    """``prctl(PR_SET_CHILD_SUBREAPER, 1)``: orphaned descendants are re-parented to us.

    Raises:
        OSError: the kernel refused (Linux < 3.4).
    """
    _lib()
    assert _prepared is not None
    _libc.call("prctl", *_prepared.subreaper)


def openat2_in_root(rootfd: int, path: str, flags: int) -> int:
    """``openat2(rootfd, path, {flags, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS})``.

    Every symlink (absolute ones and ``..`` included) is resolved as if ``rootfd`` were ``/``:
    the result never lies outside it (openat2(2), Linux 5.6+).

    Raises:
        OSError: as openat(2); ENOSYS where the kernel (or a seccomp filter) has no openat2.
    """
    import struct

    how = struct.pack("=QQQ", flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    return _syscall("openat2", rootfd, os.fsencode(path), how, len(how))


def set_loopback_up() -> None:
    """Bring ``lo`` up in this network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS; no ``ip`` needed).

    The C arguments are built by ``preload`` (before a fork or clone: fewer pages written in
    the child).

    Raises:
        OSError: the ioctl failed (for example without CAP_NET_ADMIN in the namespace).
    """
    lib = _lib()
    assert _prepared is not None
    p = _prepared
    fd = _libc.check(p.socket(*p.lo_socket))
    try:
        # struct ifreq: 16 bytes of name, then a union whose first short is ifr_flags.
        req = p.lo_ifreq
        cfd = lib.c_int(fd)
        _libc.check(p.ioctl(cfd, p.lo_get, req))
        flags = int.from_bytes(req.raw[16:18], sys.byteorder) | _IFF_UP
        req[16:18] = flags.to_bytes(2, sys.byteorder)
        _libc.check(p.ioctl(cfd, p.lo_set, req))
    finally:
        p.close(lib.c_int(fd))


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
        OSError: with ``filename`` set to the file that was refused (``"uid_map"``, ...).
    """
    items: list[tuple[str, bytes]] = []
    if deny_setgroups:
        items.append(("setgroups", b"deny"))
    items.append(("uid_map", _map_text(uid_map)))
    items.append(("gid_map", _map_text(gid_map)))
    for name, data in items:
        try:
            fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY)
            try:
                os.write(fd, data)  # one write: the kernel takes a map in a single write
            finally:
                os.close(fd)
        except OSError as e:
            e.filename = name
            raise


def _map_text(entries: Sequence[tuple[int, int, int]]) -> bytes:
    return "".join(f"{a} {b} {n}\n" for a, b, n in entries).encode()
