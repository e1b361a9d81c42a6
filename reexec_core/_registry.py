"""Names -> entry points, and the dispatch that runs one and exits with its status."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # mypy treats this name as True; importing typing would cost ~25 ms here
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    EntryPoint = Callable[..., int | None]

#: Environment variable that hands the name to another build started normally
#: (``command(..., program=PATH)``); :func:`init` removes it at once so it never leaks.
ENV_VAR = "REEXEC_CORE_ENTRY"
_ENV_FORMAT_VERSION = "1"
#: Set by ``exec_into()`` when it blocked SIGINT for the execve; the dispatch unblocks it.
SIGINT_VAR = "REEXEC_CORE_SIGINT_HELD"

_entries: dict[str, EntryPoint] = {}
# Entry points of reexec_core's own subpackages, registered when their module is imported. A
# program that never imports such a module itself (say, one whose threaded caller reaches the
# namespace runner only through a library) still gets them dispatched: the module is imported
# on demand instead of failing with "no entry point registered".
_BUILTIN_ENTRIES = {"reexec-core-namespaces": "reexec_core.namespaces"}
# (name, args) handed over by the fast child bootstrap (_child.boot) before main runs.
_pending: tuple[str, list[str]] | None = None
# The name this process was started under, once known.
_current: str | None = None
# True once init() has been called in this process: command(program=None) re-runs this
# program's main, which is only safe if that main calls init() (see _child._build).
init_called = False
# True once init() has started dispatching; _child.boot uses it to tell "main exited through
# the entry point" from "main returned without ever calling init()".
_dispatched = False


def check_name(name: object) -> str:
    """Validate an entry-point name and return it.

    Raises:
        TypeError: the name is not a str.
        ValueError: the name is empty or contains ``/`` or NUL.
    """
    if not isinstance(name, str):
        raise TypeError(f"entry point name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("entry point name must not be empty")
    if "/" in name or "\0" in name:
        raise ValueError(f"entry point name {name!r} must not contain '/' or NUL")
    return name


def register(name: str, fn: EntryPoint) -> None:
    """Register ``fn`` as the entry point run when this program is started under ``name``.

    Call it at import time (module level), before :func:`init`, as Go's ``reexec.Register``.
    Not safe for concurrent use.

    Args:
        name: the entry point's name; non-empty, without ``/`` or NUL.
        fn: called as ``fn(*args)`` with the str arguments given to ``command()`` or
            ``exec_into()``; its return value (int, or None for 0) is the exit status.

    Raises:
        ValueError: the name is empty, contains ``/`` or NUL, or is already registered.
        TypeError: ``fn`` is not callable or the name is not a str.
    """
    check_name(name)
    if not callable(fn):
        raise TypeError(f"entry point {name!r} must be callable, not {type(fn).__name__}")
    if name in _entries:
        raise ValueError(f"reexec entry point {name!r} is already registered")
    _entries[name] = fn


def registered() -> list[str]:
    """Return the registered names, sorted."""
    return sorted(_entries)


def is_registered(name: str) -> bool:
    """Return whether an entry point is registered under ``name``.

    Lets a program that registers entry points from several modules stop importing them
    once the one it was started under is registered (with :func:`current_name`).

    Args:
        name: an entry point's name.

    Returns:
        True if :func:`register` was called with this name.
    """
    return name in _entries


def set_pending(name: str, args: list[str]) -> None:
    """Remember the name and arguments the fast child was started with (see _child.boot)."""
    global _pending, _current
    _pending = (name, args)
    _current = name


def current_name() -> str | None:
    """Return the name this process was started under, or None for an ordinary start.

    Known from the very start of the process, before :func:`init` dispatches, so a program
    can tell a registered child from an ordinary start (e.g. to load only what it needs).

    Returns:
        The registered name (also while its entry point runs), or None.
    """
    if _current is None and _pending is None:
        import os

        raw = os.environ.get(ENV_VAR)
        if raw is not None:
            parts = raw.split(":", 3)
            return parts[3] if len(parts) == 4 and parts[3] else None
    return _current


def encode_env(name: str, ppid: int, pdeathsig: int | None) -> str:
    """Encode what a normally started build needs to dispatch (value of :data:`ENV_VAR`)."""
    return f"{_ENV_FORMAT_VERSION}:{ppid}:{pdeathsig or 0}:{name}"


def init() -> bool:
    """Dispatch to a registered entry point if this process was started under a name.

    Call it first thing in the program's main, after every entry point has been registered.
    When started under a name it runs that entry point with the arguments given to
    ``command()``/``exec_into()`` and then exits the process with its status (an int return
    value; None means 0; ``SystemExit`` as usual; status 1 and the traceback on stderr for an
    uncaught exception; status 130 and no traceback for ``KeyboardInterrupt``); an unknown
    name prints a message and exits with status 127. It does so by raising ``SystemExit``:
    do not catch it around ``init()``.

    Returns:
        False, at once and having done nothing, for an ordinary start (so
        ``if reexec_core.init(): sys.exit(0)`` reads as in Go). It never returns otherwise.

    Raises:
        SystemExit: always, when this process was started under a name.
    """
    global _pending, init_called
    init_called = True
    pending = _pending
    if pending is not None:
        _pending = None
        _dispatch(*pending)
    import os  # not at module level: a fast child never needs it (see reexec_core._libc)

    raw = os.environ.pop(ENV_VAR, None)
    if raw is None:
        return False
    _dispatch(*_from_env(raw))


def _from_env(raw: str) -> tuple[str, list[str]]:
    """Decode :data:`ENV_VAR`; set up name and parent-death signal as a fast child does."""
    parts = raw.split(":", 3)
    try:
        if len(parts) != 4 or parts[0] != _ENV_FORMAT_VERSION:
            raise ValueError(raw)
        ppid, sig, name = int(parts[1]), int(parts[2]), check_name(parts[3])
    except (TypeError, ValueError):
        sys.stderr.write(
            f"reexec_core: malformed {ENV_VAR}={raw!r} in the environment; "
            "it is set by reexec_core.command() and must not be set by hand\n"
        )
        raise SystemExit(127) from None
    start_child(name, sig, ppid)
    return name, sys.argv[1:]


# TASK_COMM_LEN is 16 bytes including the terminating NUL (prctl(2), PR_SET_NAME).
_COMM_MAX = 15


def set_name(name: str) -> bool:
    """Set this process's name (what ``ps`` and ``/proc/PID/comm`` show), like ``PR_SET_NAME``.

    Written through ``/proc/self/comm``, which proc(5) documents as equivalent to
    ``prctl(PR_SET_NAME)``, with ``posix`` (a registered child has not imported ``os``). The
    kernel keeps at most 15 bytes; a longer name is cut at a character boundary.

    Args:
        name: the new process name.

    Returns:
        True if the name was set, False where the platform offers no way to do it.
    """
    import posix

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
    import posix

    from reexec_core import _libc

    if pdeathsig:
        try:
            _libc.set_pdeathsig(pdeathsig)
        except OSError:
            pass  # not Linux: no parent-death signal to be had
        else:
            parent = posix.getppid()
            # getppid() is 0 when the parent lives outside our PID namespace: nothing to compare.
            if ppid and parent not in (ppid, 0):
                posix.kill(posix.getpid(), pdeathsig)
                posix._exit(128 + pdeathsig)
    set_name(name)


def _release_sigint() -> None:
    """Unblock SIGINT if ``exec_into()`` blocked it for the execve that started us; a Ctrl-C
    that arrived meanwhile is raised now, as KeyboardInterrupt, where the dispatch handles
    it."""
    # posix, not os: a fast child has not imported os, and importing it costs ~2 ms.
    import posix

    key = SIGINT_VAR.encode()
    if key not in posix.environ:
        return
    os_module = sys.modules.get("os")
    if os_module is not None:
        os_module.environ.pop(SIGINT_VAR, None)
    else:  # os.environ, if imported later, is built from posix.environ
        del posix.environ[key]
        posix.unsetenv(SIGINT_VAR)
    import _signal  # type: ignore[import-not-found]  # no enum: signal costs ms

    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGINT})


def _dispatch(name: str, args: list[str]) -> NoReturn:
    """Run the entry point ``name`` with ``args`` and exit with its status."""
    global _dispatched, _current
    _dispatched = True
    _current = name
    fn = _entries.get(name)
    if fn is None and name in _BUILTIN_ENTRIES:
        __import__(_BUILTIN_ENTRIES[name])
        fn = _entries.get(name)
    if fn is None:
        known = ", ".join(registered()) or "none"
        sys.stderr.write(
            f"reexec_core: this program was started under the name {name!r}, but no entry "
            f"point is registered under that name (registered: {known})\n"
        )
        sys.stderr.flush()
        raise SystemExit(127)
    sys.argv = [name, *args]
    try:
        _release_sigint()
        status = fn(*args)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        # Ctrl-C is the user's choice, not a bug in the entry point: no traceback, the
        # shell's status for SIGINT (128 + 2).
        raise SystemExit(130) from None
    except Exception:
        # sys.excepthook prints the traceback without importing the traceback module.
        sys.excepthook(*sys.exc_info())
        raise SystemExit(1) from None
    raise SystemExit(status)
