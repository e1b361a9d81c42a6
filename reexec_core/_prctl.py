"""The two Linux process attributes a registered child sets on itself: name and parent-death signal.

Kept free of ``ctypes``: ``import ctypes`` costs several milliseconds at every start of a
registered child, while the raw ``_ctypes`` extension it is built on costs about one. The name is
written through ``/proc/self/comm``, which the kernel documents as equivalent to
``prctl(PR_SET_NAME)`` (proc(5)); the parent-death signal has no procfs interface, so it goes
through ``prctl(2)`` called via ``_ctypes``.
"""

from __future__ import annotations

# posix is the C core of os: a registered child started with -S has not imported os yet, and
# importing it costs ~2 ms of the child's start-up. This module is Linux-only anyway.
import posix
import sys

__all__ = ["get_pdeathsig", "set_name", "set_pdeathsig", "start_child"]

# linux/prctl.h
_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
# TASK_COMM_LEN is 16 bytes including the terminating NUL (prctl(2), PR_SET_NAME).
_COMM_MAX = 15

# (prctl function, C int type, C unsigned long type), loaded on first use.
_libc: tuple[object, type, type] | None = None


def set_name(name: str) -> bool:
    """Set this process's name (what ``ps`` and ``/proc/PID/comm`` show), like ``PR_SET_NAME``.

    The kernel keeps at most 15 bytes; a longer name is cut at a character boundary.

    Args:
        name: the new process name.

    Returns:
        True if the name was set, False where the platform offers no way to do it.
    """
    raw = name.encode("utf-8", "surrogateescape")[:_COMM_MAX]
    # Do not split a multi-byte character: the kernel would store the half.
    raw = raw.decode("utf-8", "ignore").encode("utf-8")
    try:
        fd = posix.open("/proc/self/comm", posix.O_WRONLY)
    except OSError:
        return False
    try:
        posix.write(fd, raw)
    except OSError:
        return False
    finally:
        posix.close(fd)
    return True


def _load() -> tuple[object, type, type]:
    """Build a callable for libc's ``prctl`` from the raw ``_ctypes`` module (no ``ctypes``)."""
    global _libc
    if _libc is None:
        import _ctypes

        class _Int(_ctypes._SimpleCData):  # type: ignore[type-arg]
            _type_ = "i"

        class _ULong(_ctypes._SimpleCData):  # type: ignore[type-arg]
            _type_ = "L"

        class _Func(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = _Int

        # dlopen(NULL) is the main program; libc's symbols are reachable from it.
        handle = _ctypes.dlopen(None, posix.RTLD_NOW)  # type: ignore[arg-type]
        _libc = (_Func(_ctypes.dlsym(handle, "prctl")), _Int, _ULong)
    return _libc


def _prctl(option: int, arg2: int) -> int:
    """Call ``prctl(option, arg2, 0, 0, 0)``; raise ``OSError`` on failure."""
    import _ctypes

    fn, c_int, c_ulong = _load()
    # prctl(2) is variadic and reads unsigned longs: pass explicit C types, never bare ints,
    # so no upper register half is left undefined.
    zero = c_ulong(0)
    rc: int = fn(c_int(option), c_ulong(arg2), zero, zero, zero)  # type: ignore[operator]
    if rc == -1:
        err: int = _ctypes.get_errno()
        raise OSError(err, posix.strerror(err))
    return rc


def set_pdeathsig(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent thread exits.

    See prctl(2), ``PR_SET_PDEATHSIG``. The signal is tied to the *thread* that started this
    process: if the parent spawned it from a thread that then exits, the signal fires too.

    Args:
        sig: a signal number (1..64), or 0 to clear.

    Raises:
        OSError: the kernel refused (for example an invalid signal number), or the platform is
            not Linux.
    """
    if not sys.platform.startswith("linux"):
        raise OSError(38, "parent-death signals need Linux prctl(2)")
    _prctl(_PR_SET_PDEATHSIG, sig)


def get_pdeathsig() -> int:
    """Return this process's parent-death signal (0 when none is set).

    Returns:
        The signal number set with :func:`set_pdeathsig`, or 0.

    Raises:
        OSError: the platform is not Linux.
    """
    import _ctypes

    _, c_int, _ = _load()
    box = c_int(0)
    _prctl(_PR_GET_PDEATHSIG, _ctypes.addressof(box))
    value: int = box.value
    return value


def start_child(name: str, pdeathsig: int, ppid: int) -> None:
    """What a registered child does first thing: parent-death signal, parent check, name.

    Setting the signal here, in the child, instead of in a ``preexec_fn`` lets ``subprocess``
    start the child with ``vfork``/``posix_spawn`` instead of a full ``fork``. The price is a
    window between the spawn and this call in which the parent may already have died; like
    Go's runtime, close it by comparing ``getppid()`` with the pid the parent handed over.

    Args:
        name: the entry point's name, shown by ``ps``.
        pdeathsig: signal number to receive when the parent dies, or 0 for none.
        ppid: the parent's pid when it started this process, or 0 to skip the check.
    """
    if pdeathsig:
        try:
            set_pdeathsig(pdeathsig)
        except OSError:
            pass  # not Linux: no parent-death signal to be had
        else:
            parent = posix.getppid()
            # getppid() is 0 when the parent lives outside our PID namespace: nothing to compare.
            if ppid and parent not in (ppid, 0):
                posix.kill(posix.getpid(), pdeathsig)
                posix._exit(128 + pdeathsig)
    set_name(name)
