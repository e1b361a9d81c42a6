"""The caller side: start the setup process (clone, fork or a fresh interpreter), answer it, wait.

See ``_setup`` for the process tree and ``_wire`` for what the two sides say to each other.
The runner blocks the forwarded signals *before* it forks, so none sent in between is lost:
the children inherit the mask and take the signals with ``sigwaitinfo``; the runner does the
same while it waits, and passes them on.
"""

from __future__ import annotations

import gc
import os
from errno import EINVAL, ENOENT, ENOSYS

from reexec_core.namespaces import _linux, _pid1, _setup, _wire
from reexec_core.namespaces._spec import Spec
from reexec_core.namespaces.errors import (
    IdMapError,
    JoinError,
    NamespaceError,
    NamespaceLimitError,
    NamespacePermissionError,
    ThreadedCallerError,
    error_for,
    require_linux,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

    StdIO = int | IO[bytes] | IO[str] | None

#: The name of the registered entry point a threaded caller starts the setup process under.
ENTRY = "reexec-core-namespaces"
_SIGINT, _SIGKILL = 2, 9
_INHERITED = [None, None, None]


def _fd(value: StdIO) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    return value.fileno()


def _single_threaded() -> bool:
    return _linux.thread_count() == 1


def execute(
    spec: Spec,
    stdin: StdIO = None,
    stdout: StdIO = None,
    stderr: StdIO = None,
    forward_signals: bool = True,
    report: Callable[[str], object] | None = None,
) -> int:
    """Run ``spec`` to completion and return the workload's exit code (128+N for signal N).

    ``report`` receives the one-sentence notes of a sandboxed run (a limit that was hit, a
    best-effort substitute for a cgroup limit).

    Raises:
        NamespaceError: a typed leaf, when the kernel or the system refused a step.
    """
    require_linux()
    if spec.sandbox is not None:
        from reexec_core.namespaces import _cgroup

        def go() -> int:
            return _execute_auto(spec, stdin, stdout, stderr, forward_signals)

        return _cgroup.run_limited(spec.sandbox, go, report)
    return _execute_auto(spec, stdin, stdout, stderr, forward_signals)


def _execute_auto(
    spec: Spec, stdin: StdIO, stdout: StdIO, stderr: StdIO, forward_signals: bool
) -> int:
    try:
        return _execute(spec, stdin, stdout, stderr, forward_signals)
    except (NamespacePermissionError, NamespaceLimitError) as e:
        if spec.auto and spec.flags & _linux.CLONE_NEWUSER and os.geteuid() == 0:
            # "All the caller can create": root can do without the user namespace when a
            # policy forbids it. A namespace the caller named is never dropped.
            del e
            spec.flags &= ~_linux.CLONE_NEWUSER
            spec.uid_map, spec.gid_map = [], []
            spec.parent_maps = spec.deny_setgroups = spec.use_newidmap = False
            if spec.sandbox is not None and spec.sandbox["setid"] is not None:
                from reexec_core.namespaces._spec import NOBODY

                spec.sandbox["setid"] = [NOBODY, NOBODY]  # no namespace to be root of
            return _execute(spec, stdin, stdout, stderr, forward_signals)
        raise


def _execute(spec: Spec, stdin: StdIO, stdout: StdIO, stderr: StdIO, forward_signals: bool) -> int:
    fds = [_fd(stdin), _fd(stdout), _fd(stderr)]
    # Load libc's entry points once, here: every forked setup process inherits them.
    _linux.preload()
    single = _single_threaded()
    # A thread's mask and sigwaitinfo see process signals only when it is the only thread.
    forward = forward_signals and single
    relay = None
    errr = errw = ackr = ackw = -1
    # Single-threaded, the signals are blocked before the fork and taken with sigwaitinfo; a
    # threaded caller's other threads would take them instead, so there they stay as they are.
    mask = _pid1.block() if single else _pid1.current_mask()
    spec.sigmask = sorted(mask)
    # With SIGCHLD ignored the kernel reaps our child itself and its status is lost.
    chld = _pid1.default_sigchld()
    popen = None
    # No collection while the setup process runs as a copy of this one: it would write to
    # (and so copy) pages all over the heap, in the child and here.
    collect = single and gc.isenabled()
    child = -1  # until it is waited for: reaped (killed first) if anything below fails
    try:
        relay = _open_relay(spec, fds)
        errr, errw = os.pipe2(os.O_CLOEXEC)
        ackr, ackw = os.pipe2(os.O_CLOEXEC)
        if single:
            _setup.prepare(spec)
            gc.disable()
        child = _clone(spec, errr, errw, ackr, ackw, fds) if single else -1
        cloned = child != -1
        if single and not cloned:  # no clone3 here: fork, unshare, fork
            child = os.fork()
            if child == 0:  # C1
                status = 125
                try:
                    os.close(errr)
                    os.close(ackw)
                    _redirect(fds)
                    status = _setup.setup_main(spec, errw, ackr, os.getppid())
                except BaseException as e:  # noqa: B036 - must never return into the caller
                    _wire.report(errw, _wire.crashed("the setup", e))
                finally:
                    os._exit(status)
        elif not single:
            popen = _start_fresh(spec, errw, ackr, fds)
            child = popen.pid
        os.close(errw)
        os.close(ackr)
        errw = ackr = -1
        if relay is not None:
            relay.start()  # a thread: only once no more forks or clones are to come
        if cloned:
            # Write the child's id maps when it asks; what it reports later is read once it
            # has exited (no wake-up here in between, while the workload starts).
            failure = _serve_maps(spec, child, errr, ackw)
        else:
            failure = _answer(spec, child, errr, ackw)
        if collect:
            gc.enable()
            collect = False
        if failure is not None:
            raise failure
        if forward:
            # With a pty of its own the workload's size follows ours (the kernel then sends
            # it SIGWINCH); without, everything is passed on, a terminal's signals too: no
            # process of ours but this one is in the caller's terminal session.
            resize = relay.resize if relay is not None else None
            status = _pid1.supervise(child, reap_all=False, on_winch=resize)
        else:
            status = _wait(child, interrupt=forward_signals)
        child = -1  # waited for
        if cloned:
            failure = _late_failure(errr)
            if failure is not None:
                raise failure
        if popen is not None:
            popen.returncode = status
        return status
    finally:
        if child > 0:
            # A failure between the start and the wait (a refused step, a terminal that
            # would not go raw, Ctrl-C in a threaded caller): no workload is left running
            # unseen, and no zombie.
            _reap(child, popen)
        if collect:
            gc.enable()
        _pid1.restore_sigchld(chld)
        _setup.forget()
        for fd in (errr, errw, ackr, ackw):
            if fd != -1:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if relay is not None:
            relay.stop()  # the caller's terminal as it was, also after an error
        if single:
            _pid1.restore(mask)


def _start_fresh(spec: Spec, errw: int, ackr: int, fds: list[int | None]) -> Any:
    """A threaded caller: the setup process as a fresh interpreter (fork() in a threaded
    process may deadlock on a lock another thread held: the reexec pattern). Its spec goes on
    a memfd, not on its command line, which every user can read."""
    import reexec_core

    specfd = _wire.spec_fd(spec.to_json())
    try:
        cmd = reexec_core.command(ENTRY, str(specfd), str(errw), str(ackr))
        cgroup_fds = spec.sandbox["cgroup_fds"] if spec.sandbox else []
        return cmd.popen(
            pass_fds=(specfd, errw, ackr, *cgroup_fds),
            stdin=fds[0],
            stdout=fds[1],
            stderr=fds[2],
            close_fds=True,
        )
    finally:
        os.close(specfd)


def _open_relay(spec: Spec, fds: list[int | None]) -> Any:
    """An interactive run (stdin our terminal, in the foreground): a pty of the workload's
    own, relayed by this process; ``fds`` then name its slave where they were the terminal.

    Raises:
        NamespaceSetupError: no pty could be opened.
    """
    tty = 0 if fds[0] is None else fds[0]
    if not _foreground(tty):
        return None
    from reexec_core.namespaces import _pty

    try:
        relay = _pty.Relay(tty, fds)
    except OSError as e:
        raise error_for("open", e.errno or 0, 0, "a pty for the workload") from e
    fds[:] = relay.stdio
    spec.pty = True
    return relay


def _clone(spec: Spec, errr: int, errw: int, ackr: int, ackw: int, fds: list[int | None]) -> int:
    """Start the namespace's first process with clone3; -1 when this kernel has no clone3.

    One process fewer than fork + unshare + fork (each Python fork costs ~1 ms of copied page
    tables and copy-on-write faults): the child is created inside the new namespaces, PID 1
    with a PID namespace, like the child of ``unshare --fork``.
    """
    try:
        child = _linux.clone3(spec.flags)
    except OSError as e:
        if e.errno == ENOSYS:  # an old kernel, or a seccomp profile that hides clone3
            return -1
        raise error_for("unshare", e.errno or 0, spec.flags) from e
    if child == 0:
        status = 125
        try:
            os.close(errr)
            os.close(ackw)
            _redirect(fds)
            status = _setup.clone_main(spec, errw, ackr)
        except BaseException as e:  # noqa: B036 - must never return into the caller
            _wire.report(errw, _wire.crashed("the namespace's first process", e))
        finally:
            os._exit(status)
    return child


def _redirect(fds: list[int | None]) -> None:
    """In the child: make the given descriptors its stdin, stdout and stderr."""
    if fds == _INHERITED:
        return
    dups = [os.dup(fd) if fd is not None else None for fd in fds]
    for target, fd in enumerate(dups):
        if fd is not None:
            os.dup2(fd, target)
            os.close(fd)


def _answer(spec: Spec, child: int, errr: int, ackw: int) -> NamespaceError | None:
    """Serve the setup process until it has started the workload (EOF) or failed."""
    data = b""
    while True:
        chunk = os.read(errr, _wire.READ_SIZE)
        if not chunk:
            break
        data += chunk
        if data == _wire.MAP_REQUEST:
            data = b""
            try:
                _write_maps(spec, child)
            except NamespaceError as e:
                os.write(ackw, _wire.MAPS_FAILED)
                return e
            os.write(ackw, _wire.MAPS_WRITTEN)
    return _failure(data)


def _serve_maps(spec: Spec, child: int, errr: int, ackw: int) -> NamespaceError | None:
    """The clone path: write the child's id maps when it asks, answer on the ack pipe.

    Returns a failure it reported instead (or right after), else None; failures reported
    later are read by :func:`_late_failure` once it has exited.
    """
    if not spec.flags & _linux.CLONE_NEWUSER:
        return None
    data = os.read(errr, _wire.READ_SIZE)
    if data[:1] != _wire.MAP_REQUEST:
        return _failure(data)  # a failure before the maps, or EOF (killed)
    try:
        _write_maps(spec, child)
    except NamespaceError as e:
        _ack(ackw, _wire.MAPS_FAILED)
        # The child goes on after its "M": if it failed (and exited) meanwhile, its own
        # report says why, not the map of a process that is gone.
        return _failure(data[len(_wire.MAP_REQUEST) :]) or _late_failure(errr) or e
    _ack(ackw, _wire.MAPS_WRITTEN)
    return _failure(data[len(_wire.MAP_REQUEST) :])


def _ack(ackw: int, answer: bytes) -> None:
    """Answer the clone child; it may have failed and exited already (its report says why)."""
    try:
        os.write(ackw, answer)
    except BrokenPipeError:
        pass


def _late_failure(errr: int) -> NamespaceError | None:
    """After the clone child exited: the failure it reported, if any (never blocks)."""
    os.set_blocking(errr, False)
    data = b""
    try:
        while chunk := os.read(errr, _wire.READ_SIZE):
            data += chunk
    except BlockingIOError:
        pass
    return _failure(data)


def _failure(data: bytes) -> NamespaceError | None:
    """The typed error for a failure report read from the error pipe (None if there is none)."""
    failure = _wire.decode(data)
    if failure is None:
        return None
    return error_for(failure.op, failure.errno, failure.flags, failure.detail)


def _write_maps(spec: Spec, pid: int) -> None:
    """Write the child's uid/gid maps from outside: directly as root, else newuidmap."""
    if not spec.use_newidmap:
        try:
            _linux.write_id_maps(pid, spec.uid_map, spec.gid_map, spec.deny_setgroups)
        except OSError as e:
            raise error_for(e.filename or "uid_map", e.errno or 0, 0, "") from e
        return
    import shutil
    import subprocess

    for tool, idmap in (("newuidmap", spec.uid_map), ("newgidmap", spec.gid_map)):
        path = shutil.which(tool)
        if path is None:
            raise IdMapError(
                f"cannot map id ranges: {tool} is not installed (Debian/Ubuntu: apt-get install "
                "uidmap); or drop the range options",
                0,
                tool,
            )
        args = [str(x) for entry in idmap for x in entry]
        done = subprocess.run(
            [path, str(pid), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
            raise IdMapError(
                f"cannot map id ranges with {tool}: {why} (the ranges must be granted to this "
                "user in /etc/subuid and /etc/subgid)",
                0,
                tool,
            )


def _wait(child: int, interrupt: bool = False) -> int:
    """Wait for ``child``; with ``interrupt``, a KeyboardInterrupt here (Ctrl-C, in a threaded
    caller whose main thread this is) is passed on to it as SIGINT and the wait goes on."""
    while True:
        try:
            _, status = os.waitpid(child, 0)
        except InterruptedError:
            continue
        except KeyboardInterrupt:
            if not interrupt:
                raise
            try:
                os.kill(child, _SIGINT)
            except ProcessLookupError:
                pass
            continue
        return _pid1.exit_code(status)


def _reap(child: int, popen: object) -> None:
    try:
        os.kill(child, _SIGKILL)
    except ProcessLookupError:
        pass
    try:
        _wait(child)
    except ChildProcessError:
        pass
    if popen is not None:
        popen.returncode = -_SIGKILL  # type: ignore[attr-defined]


def _foreground(fd: int | None) -> bool:
    """Is the workload's stdin a terminal whose foreground process group is ours?"""
    try:
        return os.tcgetpgrp(0 if fd is None else fd) == os.getpgrp()
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# join


def join_flags(pid: int, names: list[str] | None) -> int:
    """Flags of the target's namespaces to join: those named, or all that differ from ours."""
    flags = 0
    for name, (flag, entry) in _linux.CLONE_FLAGS.items():
        if names is not None and name not in names:
            continue
        try:
            theirs = os.stat(f"/proc/{pid}/ns/{entry}")
        except FileNotFoundError:
            if names is not None:
                raise error_for("setns", ENOENT, flag, f"process {pid}") from None
            continue
        except PermissionError as e:
            raise JoinError(
                f"cannot join the namespaces of process {pid}: not permitted to inspect it; "
                "join as the user that started it or as root",
                e.errno or 0,
                "join",
            ) from e
        except OSError as e:
            raise error_for("join", e.errno or 0, 0, f"process {pid}") from e
        ours = os.stat(f"/proc/self/ns/{entry}")
        if names is not None or (theirs.st_ino, theirs.st_dev) != (ours.st_ino, ours.st_dev):
            flags |= flag
    return flags


def join(
    spec: Spec, pidfd: int, stdin: StdIO, stdout: StdIO, stderr: StdIO, forward_signals: bool
) -> int:
    """Run ``spec`` in the namespaces ``pidfd`` refers to; return the exit code."""
    require_linux()
    if not _single_threaded():
        raise ThreadedCallerError(
            "cannot join namespaces from a process with more than one thread: fork() there is "
            "unsafe; call join() before starting threads",
            EINVAL,
            "join",
        )
    fds = [_fd(stdin), _fd(stdout), _fd(stderr)]
    relay = None
    errr = errw = child = -1
    mask = _pid1.block()
    spec.sigmask = sorted(mask)
    try:
        relay = _open_relay(spec, fds)
        errr, errw = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            status = 125
            try:
                os.close(errr)
                _redirect(fds)
                status = _setup.join_main(spec, pidfd, errw, os.getppid())
            except BaseException as e:  # noqa: B036 - must never return into the caller
                _wire.report(errw, _wire.crashed("the setup", e))
            finally:
                os._exit(status)
        os.close(errw)
        errw = -1
        if relay is not None:
            relay.start()
        failure = _answer(spec, child, errr, -1)
        if failure is not None:
            raise failure
        if not forward_signals:
            status = _wait(child)
        else:
            resize = relay.resize if relay is not None else None
            status = _pid1.supervise(child, reap_all=False, on_winch=resize)
        child = -1  # waited for
        return status
    finally:
        if child > 0:
            _reap(child, None)  # a failure before the wait: nothing left running, no zombie
        for fd in (errr, errw):
            if fd != -1:
                os.close(fd)
        if relay is not None:
            relay.stop()
        _pid1.restore(mask)
