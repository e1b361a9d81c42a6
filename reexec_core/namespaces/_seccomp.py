"""Seccomp-bpf for the namespace runner: ``load`` a profile into a filter, ``install`` it last.

Built here in pure Python, with neither a compiler nor libseccomp's binding: the program is one
file that must run wherever Python does, and cannot count on a C library (or its Python
module, or a compiler to build one) being installed; and what libseccomp would do for us is
small — resolve names to numbers (``_seccomp_tables``), and generate a few hundred classic-BPF
instructions (``_seccomp_bpf``), pure code that the tests drive against the real kernel.

- :func:`load` (in the runner, before any fork): ``"default"``, ``"unconfined"`` or the path of
  a Docker/OCI profile -> the program's bytes (``_seccomp_profile`` has the rules).
- :func:`install` (in the workload's process, after ``PR_SET_NO_NEW_PRIVS``, just before
  ``exec``; runc's order, PR #789): loads the program into the kernel. It imports nothing and
  starts no thread, so it is safe right after ``fork()``.
"""

from __future__ import annotations

import os
import stat
import sys

from reexec_core import _libc
from reexec_core.namespaces._seccomp_bpf import BPF_MAXINSNS, ProgramTooLarge, compile_policy
from reexec_core.namespaces._seccomp_profile import (
    DEFAULT_DENIED,
    MACHINES,
    default_policy,
    profile_policy,
)
from reexec_core.namespaces.errors import SeccompProfileError

TYPE_CHECKING = False  # as in _libc: typing is not imported at run time
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DEFAULT_DENIED", "install", "load"]

_PROFILE_MAX = 4 << 20  # bytes; Docker's default profile is ~20 KiB
# seccomp(2)'s number, where the kernel's headers give it one; else prctl(2) is used.
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}
_SECCOMP_SET_MODE_FILTER = 1
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_EACCES = 13
_ENOSYS = 38


def _machine() -> str:
    machine = os.uname().machine
    if machine not in MACHINES:
        raise SeccompProfileError(
            f"seccomp filters are built for {' and '.join(MACHINES)} only, and this machine is "
            f'{machine}; use the "unconfined" profile here',
            0,
            "seccomp",
        )
    return machine


def _kernel() -> tuple[int, ...]:
    release = os.uname().release
    parts = []
    for part in release.split("-")[0].split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _open_regular(path: str) -> int:
    """A read descriptor of ``path`` if it is a regular file, judged *before* it is opened:
    opening a device or a FIFO acts on it (a link planted to ``/dev/watchdog`` arms it, a FIFO
    wakes its writer). An ``O_PATH`` descriptor is fstat'ed, then that same inode is opened
    again through ``/proc/self/fd`` (no second walk of the path, no race); without ``/proc``,
    the path is opened and must be the inode that was judged.

    Raises:
        OSError: the path cannot be opened; SeccompProfileError: it is no regular file.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    probe = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        judged = os.fstat(probe)
        if not stat.S_ISREG(judged.st_mode):
            raise SeccompProfileError(
                f"the seccomp profile {path} is not a regular file; give a JSON file", 0, "seccomp"
            )
        try:
            return os.open(f"/proc/self/fd/{probe}", flags)
        except FileNotFoundError:
            fd = os.open(path, flags | os.O_NOFOLLOW)
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (judged.st_dev, judged.st_ino):
            os.close(fd)
            raise SeccompProfileError(
                f"the seccomp profile {path} changed while it was read; give a file no other "
                "user can replace",
                0,
                "seccomp",
            )
        return fd
    finally:
        os.close(probe)


def _read_profile(path: str) -> bytes:
    """The profile's bytes: a regular file only (a FIFO or a device would block or never end)."""
    try:
        fd = _open_regular(path)
    except OSError as e:
        raise SeccompProfileError(
            f"cannot read the seccomp profile {path}: {e.strerror}; give the path of a "
            'Docker-format JSON profile, or "default" or "unconfined"',
            e.errno or 0,
            "seccomp",
        ) from None
    try:
        chunks = []
        size = 0
        while chunk := os.read(fd, 1 << 16):
            size += len(chunk)
            if size > _PROFILE_MAX:
                raise SeccompProfileError(
                    f"the seccomp profile {path} is larger than {_PROFILE_MAX >> 20} MiB, "
                    "which no profile needs; check the path",
                    0,
                    "seccomp",
                )
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise SeccompProfileError(
            f"cannot read the seccomp profile {path}: {e.strerror}", e.errno or 0, "seccomp"
        ) from None
    finally:
        os.close(fd)


def load(value: str, *, caps: frozenset[str] | None = None) -> bytes:
    """Compile a seccomp profile into the filter program :func:`install` loads.

    Args:
        value: ``"default"`` (our deny-list, :data:`DEFAULT_DENIED` and the argument filters:
            EPERM), ``"unconfined"`` (no filter), or the path of a Docker/OCI profile JSON.
        caps: the capability names (``"CAP_SYS_ADMIN"``) the workload holds in its effective
            set, for a profile's ``includes``/``excludes`` ``caps`` (None: none). The default
            profile does not depend on them: in a user namespace the workload holds every
            capability, and the point of the filter is to take some of that reach away.

    Returns:
        ``struct sock_filter[]`` in native byte order; ``b""`` for ``"unconfined"``.

    Raises:
        SeccompProfileError: the profile is unreadable or malformed, asks for an action that
            cannot be honoured (SCMP_ACT_NOTIFY), compiles to more than the kernel's 4096
            instructions, or this machine's architecture has no syscall table here.
    """
    if value == "unconfined":
        return b""
    if not value:
        raise SeccompProfileError(
            'no seccomp profile given; use "default", "unconfined" or the path of a '
            "Docker-format JSON profile",
            0,
            "seccomp",
        )
    machine = _machine()
    if value == "default":
        policy = default_policy(machine)
    else:
        import json

        raw = _read_profile(value)
        try:
            data = json.loads(raw)
        except UnicodeDecodeError:
            raise SeccompProfileError(
                f"the seccomp profile {value} is not UTF-8 text; give a JSON file", 0, "seccomp"
            ) from None
        except json.JSONDecodeError as e:
            raise SeccompProfileError(
                f"the seccomp profile {value} is not valid JSON ({e.msg} at line {e.lineno} "
                f"column {e.colno})",
                0,
                "seccomp",
            ) from None
        policy = profile_policy(data, value, machine, frozenset(caps or ()), _kernel())
    try:
        return compile_policy(policy)
    except ProgramTooLarge as e:
        raise SeccompProfileError(
            f"the seccomp profile {value} compiles to {e.count} BPF instructions, more than "
            f"the kernel's {BPF_MAXINSNS}; merge rules that share an action",
            0,
            "seccomp",
        ) from None


def install(program: bytes) -> None:
    """Install ``program`` (from :func:`load`) as this process's seccomp filter.

    Call it in the workload's process as the last step before ``exec``: the filter holds for
    the process and everything it starts, and can never be removed. It needs
    ``PR_SET_NO_NEW_PRIVS`` set already (or CAP_SYS_ADMIN). Uses ``seccomp(2)``
    (``SECCOMP_SET_MODE_FILTER``), falling back to ``prctl(PR_SET_SECCOMP)`` on kernels
    before 3.17. Safe right after ``fork()``: no import, no thread. ``b""`` installs nothing.

    Raises:
        ValueError: ``program`` is not a whole number of 8-byte instructions.
        OSError: the kernel refused (EACCES: neither no_new_privs nor CAP_SYS_ADMIN; EINVAL:
            a malformed program).
    """
    if not program:
        return
    count, rest = divmod(len(program), 8)
    if rest or count > 0xFFFF:
        raise ValueError("a seccomp program is a whole number of 8-byte instructions")
    lib = _libc.libc()
    filter_type: Any = type(
        "sock_filter", (lib.Array,), {"_type_": lib.c_char, "_length_": len(program)}
    )
    buf = filter_type.from_buffer_copy(program)
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }: the pointer is
    # 8-byte aligned on the 64-bit machines load() accepts.
    order = sys.byteorder
    fprog_bytes = count.to_bytes(2, order) + bytes(6) + lib.addressof(buf).to_bytes(8, order)
    fprog_type: Any = type("sock_fprog", (lib.Array,), {"_type_": lib.c_char, "_length_": 16})
    fprog = fprog_type.from_buffer_copy(fprog_bytes)
    address = lib.c_ulong(lib.addressof(fprog))
    nr = _SYS_SECCOMP.get(os.uname().machine)
    rc = -1
    err = _ENOSYS
    if nr is not None:
        rc = lib.func("syscall", "long")(
            lib.c_long(nr), lib.c_ulong(_SECCOMP_SET_MODE_FILTER), lib.c_ulong(0), address
        )
        err = lib.get_errno() if rc == -1 else 0
    if rc == -1 and err == _ENOSYS:
        zero = lib.c_ulong(0)
        rc = lib.func("prctl")(
            lib.c_int(_PR_SET_SECCOMP), lib.c_ulong(_SECCOMP_MODE_FILTER), address, zero, zero
        )
        err = lib.get_errno() if rc == -1 else 0
    if rc == -1:
        if err == _EACCES:
            raise OSError(
                err,
                "the kernel installs a seccomp filter only after PR_SET_NO_NEW_PRIVS "
                "(or with CAP_SYS_ADMIN)",
            )
        raise OSError(err, os.strerror(err))
    del buf, fprog  # kept alive until here: the kernel copied the program during the call
