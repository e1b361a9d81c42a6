"""The one way reexec_core calls libc: a loader on the raw ``_ctypes`` extension, one errno check.

``import ctypes`` costs several milliseconds at every start of a registered child, while the raw
``_ctypes`` extension it is built on costs about one: so the few C types needed are built here,
from ``_ctypes``, once, on first use. The module is kept free of ``os`` too (``posix`` is its C
core): a registered child is started with ``-S`` and has not imported ``os``, and importing it
costs ~2 ms of the child's start-up.

Also here, as the one libc call both a registered child (``reexec_core._child``) and the
namespace runner make: ``prctl(2)``'s parent-death signal.
"""

from __future__ import annotations

import posix
import sys

TYPE_CHECKING = False  # mypy treats this name as True; importing typing costs start-up time
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Libc", "call", "check", "get_pdeathsig", "libc", "set_pdeathsig"]

# errno.ENOSYS, by value: importing errno would add a module to every registered child's start.
ENOSYS = 38
# linux/prctl.h
PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2


class Libc:
    """libc's functions and the C types to call them with, built from ``_ctypes`` alone.

    Functions are looked up by name on first use and kept; all of them set ``errno`` for
    :func:`check` to read (``FUNCFLAG_USE_ERRNO``). Variadic functions (``prctl``,
    ``syscall``) must be passed explicit C types, never bare ints, so that no upper register
    half is left undefined.
    """

    def __init__(self) -> None:
        import _ctypes

        ct: Any = _ctypes
        simple = ct._SimpleCData
        self.c_int: Any = type("c_int", (simple,), {"_type_": "i"})
        self.c_long: Any = type("c_long", (simple,), {"_type_": "l"})
        self.c_ulong: Any = type("c_ulong", (simple,), {"_type_": "L"})
        self.c_char_p: Any = type("c_char_p", (simple,), {"_type_": "z"})
        self.c_char: Any = type("c_char", (simple,), {"_type_": "c"})
        self.Array: Any = ct.Array
        self.addressof: Any = ct.addressof
        self.get_errno: Any = ct.get_errno
        flags = ct.FUNCFLAG_CDECL | ct.FUNCFLAG_USE_ERRNO
        self._kinds: dict[str, Any] = {
            "int": type("IntFunc", (ct.CFuncPtr,), {"_flags_": flags, "_restype_": self.c_int}),
            "long": type("LongFunc", (ct.CFuncPtr,), {"_flags_": flags, "_restype_": self.c_long}),
        }
        # dlopen(NULL) is the main program; libc's symbols are reachable from it.
        self._handle: Any = ct.dlopen(None, posix.RTLD_NOW)
        self._dlsym: Any = ct.dlsym
        self._funcs: dict[str, Any] = {}

    def buffer(self, raw: bytes) -> Any:
        """A C buffer holding ``raw``, passed to C as a pointer (a struct the kernel reads)."""
        kind = type("buffer", (self.Array,), {"_type_": self.c_char, "_length_": len(raw)})
        buf = kind()
        buf.raw = raw
        return buf

    def func(self, name: str, returns: str = "int") -> Any:
        """Return libc's function ``name`` (``returns``: ``"int"`` or ``"long"``).

        Raises:
            OSError: libc has no such symbol.
        """
        fn = self._funcs.get(name)
        if fn is None:
            fn = self._funcs[name] = self._kinds[returns](self._dlsym(self._handle, name))
        return fn


_libc: Libc | None = None


def libc() -> Libc:
    """Return the loaded libc (loaded on the first call)."""
    global _libc
    if _libc is None:
        _libc = Libc()
    return _libc


def check(rc: int) -> int:
    """The one errno check: a libc call's ``-1`` becomes ``OSError(errno)``; else ``rc``.

    Raises:
        OSError: ``rc`` is -1; its ``errno`` is the call's.
    """
    if rc == -1:
        err: int = libc().get_errno()
        raise OSError(err, posix.strerror(err))
    return rc


def call(name: str, *args: object) -> int:
    """Call libc's int function ``name`` with C-typed ``args`` and :func:`check` the result."""
    rc: int = libc().func(name)(*args)
    return check(rc)


# prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) arguments by signal: built once, so that a forked or
# cloned setup process that calls it writes (copies) as few pages as possible.
_pdeathsig_args: dict[int, tuple[object, ...]] = {}


def pdeathsig_args(sig: int) -> tuple[object, ...]:
    """Return (and keep) the C arguments of ``prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)``."""
    args = _pdeathsig_args.get(sig)
    if args is None:
        lib = libc()
        zero = lib.c_ulong(0)
        args = (lib.c_int(PR_SET_PDEATHSIG), lib.c_ulong(sig), zero, zero, zero)
        _pdeathsig_args[sig] = args
    return args


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
        raise OSError(ENOSYS, "parent-death signals need Linux prctl(2)")
    call("prctl", *pdeathsig_args(sig))


def get_pdeathsig() -> int:
    """Return this process's parent-death signal (0 when none is set).

    Raises:
        OSError: the platform is not Linux.
    """
    if not sys.platform.startswith("linux"):
        raise OSError(ENOSYS, "parent-death signals need Linux prctl(2)")
    lib = libc()
    box = lib.c_int(0)
    zero = lib.c_ulong(0)
    call("prctl", lib.c_int(PR_GET_PDEATHSIG), lib.c_ulong(lib.addressof(box)), zero, zero, zero)
    value: int = box.value
    return value
