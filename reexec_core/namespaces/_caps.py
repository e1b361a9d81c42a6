"""Capabilities: names, the set a workload would hold, and the raw calls that shape it.

A workload that is root inside its user namespace holds every capability *of that namespace*
after its ``execve`` (capabilities(7): root's file sets count as all ones, so its new permitted
set is the bounding set). ``cap_drop``/``cap_add`` therefore change what the workload keeps,
starting from what it would hold anyway: all of them for root inside, none for another uid.

:func:`apply` runs in the workload's own process just before its ``execve``, in the order that
keeps the five sets consistent (``PR_CAPBSET_DROP`` needs CAP_SETPCAP, so it comes first):

1. bounding set: ``PR_CAPBSET_DROP`` every capability not kept (what root gets at exec);
2. ``capset(2)``: effective = permitted = inheritable = the kept set;
3. ambient set: cleared, then each kept capability raised, so a non-root uid inside keeps
   them across its ``execve`` too (``PR_CAP_AMBIENT``).

The raw calls go through libc (``reexec_core._libc``): glibc's ``capset`` and ``prctl``.
"""

from __future__ import annotations

import os
import struct

from reexec_core import _libc

#: linux/capability.h, in bit order (CAP_CHOWN is bit 0).
NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip

# linux/prctl.h
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 2, 4
_PR_SET_NO_NEW_PRIVS, _PR_GET_NO_NEW_PRIVS = 38, 39
# linux/capability.h: _LINUX_CAPABILITY_VERSION_3 (two 32-bit words per set)
_VERSION_3 = 0x20080522


def last_cap() -> int:
    """The highest capability number this kernel knows (``/proc/sys/kernel/cap_last_cap``)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return min(int(f.read()), len(NAMES) - 1)
    except (OSError, ValueError):
        return len(NAMES) - 1


def all_caps() -> int:
    """Every capability this kernel knows, as a bit mask."""
    return (1 << (last_cap() + 1)) - 1


def parse(values: object, option: str) -> int:
    """``"ALL"``, ``"CAP_NET_RAW,chown"`` or a list of such names -> a bit mask.

    Raises:
        TypeError: not a string or a list of strings.
        ValueError: an unknown capability name.
    """
    if isinstance(values, str):
        items = [values]
    elif isinstance(values, (list, tuple, set, frozenset)):
        items = list(values)
    else:
        raise TypeError(f"{option} must be a capability name or a list of them")
    mask = 0
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{option} must be a capability name or a list of them")
        for raw in item.split(","):
            name = raw.strip().upper()
            if name == "ALL":
                mask |= all_caps()
                continue
            bare = name[4:] if name.startswith("CAP_") else name
            if bare not in NAMES[: last_cap() + 1]:
                raise ValueError(
                    f"{option}: unknown capability {raw.strip()!r} (e.g. CAP_NET_RAW, CHOWN or "
                    "ALL; see capabilities(7))"
                )
            mask |= 1 << NAMES.index(bare)
    return mask


def names(mask: int) -> frozenset[str]:
    """The ``CAP_*`` names of the bits set in ``mask``."""
    return frozenset(f"CAP_{n}" for i, n in enumerate(NAMES) if mask >> i & 1)


def bounding_set() -> int:
    """This process's bounding set (``CapBnd`` of ``/proc/self/status``)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"CapBnd:"):
                return int(line.split()[1], 16)
    return all_caps()


def _prctl(*args: int) -> int:
    lib = _libc.libc()
    cargs = [lib.c_int(args[0])] + [lib.c_ulong(a) for a in args[1:]]
    cargs += [lib.c_ulong(0)] * (5 - len(cargs))
    return _libc.call("prctl", *cargs)


def drop_bounding(keep: int) -> None:
    """Drop every capability but ``keep`` from the bounding set (step 1; needs CAP_SETPCAP).

    Raises:
        OSError: the kernel refused (``filename`` names the call).
    """
    for cap in range(last_cap() + 1):
        if not keep >> cap & 1:
            _step("PR_CAPBSET_DROP", _prctl, _PR_CAPBSET_DROP, cap)


def apply(keep: int) -> None:
    """After :func:`drop_bounding`: leave this process (about to exec the workload) with
    exactly the capabilities ``keep`` in its effective, permitted, inheritable and ambient sets.

    Raises:
        OSError: the kernel refused a step (``filename`` names it).
    """
    lib = _libc.libc()
    header = lib.buffer(struct.pack("=Ii", _VERSION_3, 0))
    low, high = keep & 0xFFFFFFFF, keep >> 32
    # struct __user_cap_data_struct[2]: effective, permitted, inheritable for bits 0-31, 32-63.
    data = lib.buffer(struct.pack("=6I", low, low, low, high, high, high))
    _step("capset", lambda: _libc.call("capset", header, data))
    _step("PR_CAP_AMBIENT", _prctl, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(last_cap() + 1):
        if keep >> cap & 1:
            _step("PR_CAP_AMBIENT", _prctl, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap)


def set_no_new_privs() -> None:
    """``prctl(PR_SET_NO_NEW_PRIVS, 1)``: setuid bits and file capabilities give nothing more at
    ``execve`` from now on, in this process and every descendant.

    Raises:
        OSError: the kernel refused.
    """
    _step("PR_SET_NO_NEW_PRIVS", _prctl, _PR_SET_NO_NEW_PRIVS, 1)
    if _prctl(_PR_GET_NO_NEW_PRIVS) != 1:
        raise OSError(0, "PR_SET_NO_NEW_PRIVS did not stick", "PR_SET_NO_NEW_PRIVS")


def _step(what: str, fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as e:
        raise OSError(e.errno, os.strerror(e.errno) if e.errno else str(e), what) from e
