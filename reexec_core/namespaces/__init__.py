"""Run a command or a registered entry point in new Linux namespaces, rootless, with a real PID 1.

The second half of reexec: Go's container runtimes start themselves again with
``CLONE_NEWUSER | CLONE_NEWPID | ...`` because namespaces must be entered by a fresh,
single-threaded process. From a single-threaded Python program we can do better than a new
interpreter: :func:`run` forks, unshares and execs (no interpreter start at all); a threaded
caller gets a fresh interpreter started through :func:`reexec_core.command`, which then does
the same.

Example::

    from reexec_core import namespaces

    status = namespaces.run(["sh", "-c", "id -u; hostname; echo $$"], hostname="box")
    # prints 0 / box / 2: root inside (mapped onto the caller), PID 1 is our init

* :func:`run` — an external command in new namespaces; returns its exit status
  (128+N when signal N killed it).
* :func:`run_entry` — the same for an entry point registered with
  :func:`reexec_core.register`.
* :func:`join` — run a command or an entry point in the namespaces of a running process
  (``nsenter -t PID``), given its pid or a pidfd.
* :func:`unshare` — move the calling process itself (single-threaded) into new namespaces.

Options (keywords; a CLI would name its flags alike):

``namespaces``
    ``"user,pid,mount,net,uts,ipc,cgroup,time"`` or a list; None (default) means all this
    kernel has. A namespace named explicitly that cannot be created raises; with None, a root
    caller whose user namespaces are blocked by policy runs without one.
``map_root`` / ``map_current``
    With a user namespace: root inside mapped onto the caller (default), or the caller's own
    ids. ``subids=True`` adds the caller's ``/etc/subuid``/``/etc/subgid`` ranges (through
    ``newuidmap``/``newgidmap``); ``uid_map``/``gid_map`` give explicit
    ``[(inside, outside, count), ...]`` maps.
``hostname``
    Set inside the UTS namespace.
``bind`` / ``ro_bind`` / ``tmpfs`` / ``mounts`` / ``root`` / ``proc``
    Bind mounts (``"SRC:DST"`` or ``(src, dst)``; ``ro_bind`` read-only, recursively), tmpfs
    mounts, an ordered ``[(kind, src, dst)]`` list, a new root (``pivot_root``) under which
    the targets lie, and whether to mount a fresh ``/proc`` (default: with pid + mount).
``cwd`` / ``env`` / ``stdin`` / ``stdout`` / ``stderr``
    As for ``subprocess`` (file objects or descriptors; default: inherited).
``forward_signals``
    Pass SIGHUP/INT/QUIT/USR1/USR2/TERM/WINCH sent to the caller (or by its terminal: the
    workload is in a session of its own) on to the workload while it runs (default True;
    effective in a single-threaded caller; a threaded one passes on a KeyboardInterrupt of
    its main thread as SIGINT).

The sandbox (what the workload may do and consume; ``docs/namespaces.md``, "Sandbox"):

``memory`` / ``pids_limit`` / ``cpus``
    Limits of a cgroup of the workload's own (``"64m"``, ``32``, ``0.5``): cgroup v2 where
    delegated or as root, v1 as root; ``limits_best_effort=True`` turns pids and memory into
    RLIMIT_NPROC / RLIMIT_AS where no cgroup can be had.
``ulimits``
    ``["nofile=16", "cpu=1:2"]`` or ``{"nofile": 16}``: resource limits (nofile, nproc, as,
    cpu, fsize, core).
``seccomp``
    ``"default"``, ``"unconfined"`` or the path of a Docker/OCI profile.
``cap_drop`` / ``cap_add``
    ``"ALL"`` or capability names: what the workload keeps of the capabilities it would hold.
``no_new_privileges``
    Default True when any sandbox option is given.
``landlock_ro`` / ``landlock_rw``
    Paths the workload may read / read and write (Landlock); the rest is denied.
``sandbox``
    ``"strict"``: the preset for untrusted code (caps dropped, no_new_privs, the default
    seccomp filter, Landlock, no core dumps).
``report``
    A callable given each one-sentence note of the run (``"killed: memory limit 64 MiB
    reached"``); the library prints nothing itself.

Every kernel refusal raises a :class:`NamespaceError` leaf whose message names the cause and
the knob (see ``docs/namespaces.md``). Misuse raises ``ValueError``/``TypeError``.

A program that calls :func:`run`/:func:`run_entry` from several threads must import this
module before it calls ``reexec_core.init()`` (it registers the entry point the fresh setup
process is started under).
"""

from __future__ import annotations

import os

import reexec_core

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

    from reexec_core.namespaces._runner import StdIO
    from reexec_core.namespaces.errors import (
        CommandError,
        IdMapError,
        JoinError,
        MountError,
        NamespaceError,
        NamespaceLimitError,
        NamespacePermissionError,
        NamespaceSetupError,
        NamespaceUnsupportedError,
        SandboxError,
        SeccompProfileError,
        ThreadedCallerError,
    )

_ERRORS = frozenset(
    {
        "CommandError",
        "IdMapError",
        "JoinError",
        "MountError",
        "NamespaceError",
        "NamespaceLimitError",
        "NamespacePermissionError",
        "NamespaceSetupError",
        "NamespaceUnsupportedError",
        "SandboxError",
        "SeccompProfileError",
        "ThreadedCallerError",
    }
)


def __getattr__(name: str) -> Any:
    # The exception classes (in .errors, with the diagnosis) load on first use: importing this
    # module must stay cheap, every start of an app that uses it pays.
    if name in _ERRORS:
        from reexec_core.namespaces import errors

        return getattr(errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CommandError",
    "IdMapError",
    "JoinError",
    "MountError",
    "NamespaceError",
    "NamespaceLimitError",
    "NamespacePermissionError",
    "NamespaceSetupError",
    "NamespaceUnsupportedError",
    "SandboxError",
    "SeccompProfileError",
    "ThreadedCallerError",
    "available",
    "join",
    "run",
    "run_entry",
    "unshare",
]


def available() -> list[str]:
    """Return the namespace types this kernel has, in canonical order."""
    from reexec_core.namespaces import _linux

    return _linux.kernel_namespaces()


def run(
    argv: Sequence[str],
    *,
    stdin: StdIO = None,
    stdout: StdIO = None,
    stderr: StdIO = None,
    forward_signals: bool = True,
    report: Callable[[str], object] | None = None,
    **options: Any,
) -> int:
    """Run the command ``argv`` in new namespaces and return its exit status.

    Args:
        argv: the command and its arguments (searched on ``PATH`` like ``execvp``).
        stdin, stdout, stderr: descriptors or file objects (default: inherited).
        forward_signals: pass signals sent to the caller on to the workload.
        report: called with each one-sentence note of a sandboxed run (a limit the workload
            hit, a best-effort substitute); the library prints nothing itself.
        **options: see the module documentation (namespaces, map_root, hostname, the
            sandbox's memory, ulimits, seccomp, cap_drop, landlock_rw, sandbox, ...).

    The workload runs in a session of its own; when stdin is this process's terminal, in the
    foreground, it gets a pty of its own, relayed to that terminal (raw mode meanwhile). It
    inherits its stdio and no other descriptor.

    When it ends: with a PID namespace, the kernel kills everything left in it once PID 1
    exits, and PID 1 dies with the caller (``kill -9`` included). Without one, the process
    that spawned the workload is its child subreaper and SIGKILLs every process still
    descended from it when it exits or when the caller dies, before this returns; not covered
    are processes something outside started on its behalf, and a SIGKILL sent to that
    supervisor itself (see ``docs/namespaces.md``, "Die with the parent").

    Returns:
        The exit status, or 128+N when signal N killed the command.

    Raises:
        NamespaceError: a leaf naming the cause (limit, policy, kernel, mount, map, exec; a
            sandbox option this system cannot give: ``SandboxError``, ``SeccompProfileError``).
        ValueError, TypeError: contradictory or unknown options.
    """
    from reexec_core.namespaces import _runner, _spec

    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a sequence of arguments, not a string")
    spec = _spec.make_spec(argv=list(argv), **options)
    return _runner.execute(spec, stdin, stdout, stderr, forward_signals, report)


def run_entry(
    name: str,
    *args: str,
    stdin: StdIO = None,
    stdout: StdIO = None,
    stderr: StdIO = None,
    forward_signals: bool = True,
    report: Callable[[str], object] | None = None,
    **options: Any,
) -> int:
    """Run the registered entry point ``name`` with ``args`` in new namespaces.

    The entry point runs in this program started again (``reexec_core.command``), inside the
    namespaces, as the child of the namespace's PID 1.

    Returns:
        Its exit status (128+N for signal N).

    Raises:
        NamespaceError, ValueError, TypeError: as for :func:`run`.
        RuntimeError: this program cannot be started again under a name (``python -c``, or
            ``reexec_core.init()`` was never called), from ``reexec_core.command``.
    """
    from reexec_core._registry import check_name
    from reexec_core.namespaces import _runner, _spec

    check_name(name)
    for arg in args:
        if not isinstance(arg, str):
            raise TypeError(f"entry point arguments must be str, not {type(arg).__name__}")
    spec = _spec.make_spec(entry=[name, *args], **options)
    # Fail here, in the caller, if this program cannot be started again under a name (no
    # init() called, python -c): PID 1 makes the real Command inside the namespaces.
    reexec_core.command(name, *args)
    return _runner.execute(spec, stdin, stdout, stderr, forward_signals, report)


def join(
    pid: int | None = None,
    argv: Sequence[str] | None = None,
    *,
    pidfd: int | None = None,
    entry: str | None = None,
    entry_args: Sequence[str] = (),
    namespaces: Iterable[str] | str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    stdin: StdIO = None,
    stdout: StdIO = None,
    stderr: StdIO = None,
    forward_signals: bool = True,
) -> int:
    """Run a command or an entry point in the namespaces of a running process (``nsenter -t``).

    Args:
        pid: the target process (or give ``pidfd``).
        argv: the command to run there; or ``entry`` (a registered name) with ``entry_args``.
        pidfd: a pidfd of the target instead of ``pid`` (no pid-reuse race).
        namespaces: which to join (default: all of the target's that differ from ours).
        cwd, env, stdin, stdout, stderr, forward_signals: as for :func:`run`.

    Returns:
        The exit status (128+N for signal N).

    Raises:
        JoinError: the target is gone or its namespaces may not be joined.
        ThreadedCallerError: called from a process with several threads.
        ValueError: neither or both of ``argv`` and ``entry``; neither or both of pid, pidfd.
    """
    from reexec_core.namespaces import _linux, _runner, _spec, errors

    if (pid is None) == (pidfd is None):
        raise ValueError("give exactly one of pid and pidfd")
    if (argv is None) == (entry is None):
        raise ValueError("give exactly one of argv and entry")
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a sequence of arguments, not a string")
    if entry is not None:
        reexec_core.command(entry, *entry_args)  # RuntimeError here, not in the namespaces
    errors.require_linux()
    own_fd = pidfd is None
    if pidfd is None:
        assert pid is not None
        try:
            pidfd = _linux.pidfd_open(pid)
        except OSError as e:
            raise errors.error_for("join", e.errno or 0, 0, f"process {pid}") from e
    try:
        if pid is None:
            pid = _pid_of(pidfd)
        names = None
        if namespaces is not None:
            names = _linux.names_for(_spec.parse_names(namespaces)[0])
        spec = _join_spec(argv, entry, entry_args, cwd, env)
        spec.join = pid
        spec.join_flags = _runner.join_flags(pid, names)
        return _runner.join(spec, pidfd, stdin, stdout, stderr, forward_signals)
    finally:
        if own_fd:
            os.close(pidfd)


def _join_spec(
    argv: Sequence[str] | None,
    entry: str | None,
    entry_args: Sequence[str],
    cwd: str | os.PathLike[str] | None,
    env: dict[str, str] | None,
) -> Any:
    from reexec_core.namespaces import _spec

    spec = _spec.make_spec(
        argv=argv,
        entry=[entry, *entry_args] if entry is not None else None,
        namespaces="uts",  # placeholder: a join creates nothing (flags reset below)
        cwd=cwd,
        env=env,
    )
    spec.flags = 0
    spec.proc = False
    return spec


def _pid_of(pidfd: int) -> int:
    """Return the pid a pidfd refers to (the ``Pid:`` line of ``/proc/self/fdinfo/FD``)."""
    with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
        for line in f:
            if line.startswith(b"Pid:"):
                pid = int(line.split()[1])
                if pid > 0:
                    return pid
    from errno import ESRCH

    from reexec_core.namespaces.errors import JoinError

    raise JoinError(
        f"cannot join: descriptor {pidfd} is not a pidfd of a running process",
        ESRCH,
        "join",
    )


def unshare(namespaces: Iterable[str] | str) -> None:
    """Move the calling process itself into new namespaces (``unshare(2)``).

    PID and time namespaces apply to the children started afterwards. No uid/gid map is
    written: see :func:`run` for a complete sandbox.

    Raises:
        ThreadedCallerError: user or mount namespaces asked for by a process with threads.
        NamespaceError: another leaf, naming the cause.
    """
    from reexec_core.namespaces import _linux, _spec, errors

    flags, _ = _spec.parse_names(namespaces)
    errors.require_linux()
    try:
        _linux.unshare_raw(flags)
    except OSError as e:
        threads = _linux.thread_count()
        raise errors.error_for("unshare", e.errno or 0, flags, threads=threads) from e


def _setup_entry(specfd: str, errfd: str, ackfd: str) -> int:
    from reexec_core.namespaces import _setup

    return _setup.entry_main(specfd, errfd, ackfd)


# The entry point a threaded caller's setup process is started under (see _runner.execute).
reexec_core.register("reexec-core-namespaces", _setup_entry)
