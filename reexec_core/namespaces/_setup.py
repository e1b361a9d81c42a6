"""The child side: the processes that build the namespaces and start the workload in them.

Fast path (single-threaded caller), :func:`clone_main`::

    runner ──clone3(CLONE_NEW*)──> first process (PID 1 with a PID namespace): hostname,
      (writes its id maps)         lo up, mounts, /proc
                                     └─posix_spawn──> workload (PID 2): CMD / the entry point

Without a PID namespace the first process is no PID 1: it spawns the workload as a child
subreaper and kills the workload's whole tree when the workload exits or the runner dies (see
``_pid1``). Where clone3 is hidden (Docker's seccomp profile answers ENOSYS),
:func:`setup_main` does the same the older way::

    runner ──fork──> setup (C1): unshare(...); id map
                       └─fork──> init (C2, PID 1): the inside; spawns the workload

A threaded caller cannot fork safely, so the runner starts C1 as a fresh interpreter instead
(a registered entry point, see ``reexec_core.namespaces``), which then runs ``setup_main``.
:func:`join_main` is the process that joins a running sandbox's namespaces (``join``).

Every process here leaves the caller's terminal session first (``setsid``): a workload that
shares the caller's controlling terminal could push input into it (``TIOCSTI``, bubblewrap's
CVE-2017-5226). An interactive workload gets a pty of its own instead (``_pty``), whose slave
is its stdin and which it makes its controlling terminal. Before the workload can exist, the
process that will be its parent closes every descriptor it does not need and makes itself
non-dumpable (:func:`seal`): it is a copy of the caller, and the workload, root of a user
namespace, could otherwise read its memory and reach its descriptors through ``/proc``.

Every process here dies with its parent: each sets ``PR_SET_PDEATHSIG`` to SIGKILL and then
checks that its parent is still there (``getppid()``, or EOF on a pipe only the parent holds
when the parent lies outside our PID namespace), and when PID 1 dies the kernel kills the rest
of its namespace. Failures before the workload runs, and the request for the uid/gid maps, go
to the runner over the pipes of ``_wire``; the runner raises the typed error.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no enum: signal costs ms
import gc
import os
import sys
from errno import EACCES, ENOENT

from reexec_core.namespaces import _linux, _mounts, _pid1, _wire
from reexec_core.namespaces._spec import Spec
from reexec_core.namespaces._wire import Failure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    #: The workload's environment: str, or bytes (``os.environb``) when inherited.
    Env = dict[Any, Any]

_SIGKILL = 9
_SIGPIPE, _SIGXFSZ = 13, 25
_TIOCSCTTY = 0x540E
#: Signals the workload starts with at their default action.
_SIGDEF = (*_pid1.WAITSET, _SIGPIPE, _SIGXFSZ)


def die_with_parent(parent: int, sig: int = _SIGKILL) -> None:
    """Get ``sig`` when the parent dies; exit now if it already has (Go's runtime does this)."""
    _linux.set_pdeathsig(sig)
    if parent and os.getppid() != parent:
        os._exit(128 + _SIGKILL)


def _step(op: str, detail: str, fn: object, *args: object, flags: int = 0) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as e:
        raise Failure(op, e.errno or 0, flags, detail) from e


def _new_session() -> None:
    """Leave the caller's session: no access to its controlling terminal's input (TIOCSTI)."""
    _step("setsid", "(leaving the caller's terminal session)", os.setsid)


def _death_signal(spec: Spec) -> int:
    """SIGKILL for a PID 1 (the kernel then ends the namespace), else the caught DEATHSIG."""
    if spec.flags & _linux.CLONE_NEWPID:
        return _SIGKILL
    _pid1.block_deathsig()
    return _pid1.DEATHSIG


def _open_proc(spec: Spec) -> int | None:
    """Without a PID namespace: become the workload's subreaper, and return a ``/proc``
    descriptor to find its tree with later (opened now: a new root may have no ``/proc``;
    -1 when there is none). None with a PID namespace: the kernel ends the tree."""
    if spec.flags & _linux.CLONE_NEWPID:
        return None
    _step("subreaper", "(PR_SET_CHILD_SUBREAPER)", _linux.set_child_subreaper)
    try:
        return os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return -1


def seal(*keep: int | None) -> None:
    """Close every descriptor but stdio and ``keep``, then make this process non-dumpable.

    Called in each copy of the caller (and in each set-up process) before the workload can
    exist: the workload could otherwise open our descriptors, close-on-exec ones too, through
    ``/proc/PID/fd/N`` and read our memory through ``/proc/PID/mem``. Non-dumpable, only
    CAP_SYS_PTRACE in our memory's user namespace (the caller's) opens them (ptrace(2)).

    Raises:
        Failure: the kernel would not make us non-dumpable.
    """
    low = 3
    for fd in sorted(k for k in keep if k is not None and k >= 3):
        os.closerange(low, fd)  # close_range(2) on Linux: one call, whatever the limit
        low = fd + 1
    os.closerange(low, 0x7FFFFFFF)
    try:
        _linux.set_undumpable()
    except OSError as e:
        raise Failure(
            "make", e.errno or 0, 0, "the set-up process unreadable from inside (PR_SET_DUMPABLE)"
        ) from e


def setup_main(spec: Spec, errfd: int, ackfd: int, parent: int) -> int:
    """C1: create the namespaces, get the id maps written, then start PID 1 or the workload.

    Returns only the exit code to ``os._exit`` with: the workload's status, or 125 after a
    reported failure.
    """
    try:
        _new_session()
        own = not spec.needs_fork  # no PID or time namespace: C1 supervises the workload
        die_with_parent(parent, _death_signal(spec) if own else _SIGKILL)
        flags = spec.flags
        _step("unshare", "", _linux.unshare_raw, flags, flags=flags)
        if spec.flags & _linux.CLONE_NEWUSER:
            if spec.parent_maps:
                _wire.request_maps(errfd)
                if _wire.read_answer(ackfd) != _wire.MAPS_WRITTEN:
                    return 125  # the runner failed to write them (and raises the error), or died
            else:
                try:
                    _linux.write_id_maps("self", spec.uid_map, spec.gid_map, True)
                except OSError as e:
                    raise Failure(e.filename or "uid_map", e.errno or 0, 0, "") from e
        os.close(ackfd)
        if own:
            procfd = _open_proc(spec)
            inner_setup(spec)
            return _spawn_and_supervise(spec, errfd, procfd)
        seal(errfd, *_kept(spec))
        alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            status = 125
            try:
                os.close(alive_w)
                status = init_main(spec, errfd, alive_r)
            except Failure as f:
                _wire.report(errfd, f)
            except BaseException as e:  # noqa: B036 - must never return into the caller
                _wire.report(errfd, _wire.crashed("PID 1", e))
            finally:
                os._exit(status)
        os.close(errfd)
        os.close(alive_r)
        return _pid1.supervise(child, reap_all=False)
    except Failure as f:
        _wire.report(errfd, f)
        return 125


def _spawn_and_supervise(spec: Spec, errfd: int, procfd: int | None) -> int:
    """Seal this process, start the workload, supervise it (as PID 1, or as its subreaper)."""
    seal(errfd, procfd, *_kept(spec))
    child = start_workload(spec, errfd)
    os.close(errfd)
    for fd in _kept(spec):
        os.close(fd)  # the workload's process has them now
    return _pid1.supervise(child, reap_all=True, procfd=procfd, group=True)


def _kept(spec: Spec) -> list[int]:
    """Descriptors the workload's process needs from the set-up (its cgroup's procs files)."""
    return list(spec.sandbox["cgroup_fds"]) if spec.sandbox else []


def clone_main(spec: Spec, errfd: int, ackfd: int) -> int:
    """The child of ``clone3``: already inside every new namespace (PID 1 with a PID one).

    Asks the runner for its id maps, sets the inside up meanwhile, waits for the maps (which
    also proves the runner is still there), then spawns the workload and supervises it.
    Returns the exit code to ``os._exit`` with.
    """
    try:
        # Every page this copy of the interpreter writes is a copy-on-write fault: no
        # collection may walk the whole heap in here (the runner disabled it before cloning,
        # and built the arguments used below, see prepare() and _linux.preload()).
        gc.disable()
        _new_session()
        _linux.set_pdeathsig(_death_signal(spec))
        if spec.flags & _linux.CLONE_NEWUSER:
            # The runner owns this user namespace, so it may write our maps (one line of its
            # own ids after "deny" in setgroups, like unshare -r; ranges as root or through
            # newuidmap). It does so while we bring lo up and mount; see _await_maps.
            _wire.request_maps(errfd)
        else:
            # getppid() is 0 in a new PID namespace: the runner is the only writer of the ack
            # pipe, so EOF there means it died before our parent-death signal was set.
            if _wire.peer_gone(ackfd):
                os._exit(128 + _SIGKILL)
            os.close(ackfd)
            ackfd = -1
        if spec.flags & _linux.CLONE_NEWPID:
            # _registry.set_name, without its encoding work (bytes constants: fewer pages
            # written).
            try:
                fd = os.open(b"/proc/self/comm", os.O_WRONLY)
                try:
                    os.write(fd, b"ns-init")
                finally:
                    os.close(fd)
            except OSError:
                pass
        procfd = _open_proc(spec)
        inner_setup(spec, ackfd)
        return _spawn_and_supervise(spec, errfd, procfd)
    except Failure as f:
        _wire.report(errfd, f)
        return 125


def _await_maps(ackfd: int) -> None:
    """Wait for the runner's answer to our map request: the id maps are written (or it failed).

    The runner answers only after reading the request sent after ``PR_SET_PDEATHSIG``: an
    answer proves it was alive then (later, its death kills us); EOF means it died before.
    """
    answer = _wire.read_answer(ackfd)
    os.close(ackfd)
    if answer != _wire.MAPS_WRITTEN:
        # MAPS_FAILED: the runner could not write them and raises the error itself.
        os._exit(125 if answer else 128 + _SIGKILL)


def init_main(spec: Spec, errfd: int, alive_r: int) -> int:
    """C2, PID 1 of the new PID namespace: set up the inside, start the workload, supervise.

    With a time namespace but no PID namespace it is the workload's subreaper instead.
    """
    _linux.set_pdeathsig(_death_signal(spec))
    # getppid() is 0 here (the parent is outside our PID namespace): ask the pipe instead.
    # Its only writer is C1, which never writes: EOF means C1 is gone.
    if _wire.peer_gone(alive_r):
        os._exit(128 + _SIGKILL)
    os.close(alive_r)
    if spec.flags & _linux.CLONE_NEWPID:
        # Not through /proc/self/comm: C1 forked us non-dumpable, and that file is root's now.
        _step("name", "ns-init", _linux.set_comm, b"ns-init")
    procfd = _open_proc(spec)
    inner_setup(spec)
    return _spawn_and_supervise(spec, errfd, procfd)


def join_main(spec: Spec, pidfd: int, errfd: int, parent: int) -> int:
    """The joining process: setns into the target's namespaces, then run the workload."""
    try:
        _new_session()
        pid_ns = spec.join_flags & _linux.CLONE_NEWPID
        if not pid_ns:
            _pid1.block_deathsig()
        die_with_parent(parent, _SIGKILL if pid_ns else _pid1.DEATHSIG)
        procfd = None if pid_ns else _open_proc(spec)
        flags = spec.join_flags
        try:
            _linux.setns_raw(pidfd, flags)  # a pidfd joins them all at once (Linux 5.8+)
        except OSError as e:
            raise Failure("setns", e.errno or 0, flags, f"process {spec.join}") from e
        os.close(pidfd)
        if not spec.cwd:
            os.chdir("/")
        seal(errfd, procfd)
        child = start_workload(spec, errfd)
        os.close(errfd)
        # Joined into a PID namespace, the workload's orphans go to that namespace's init.
        return _pid1.supervise(child, reap_all=False, procfd=procfd, group=True)
    except Failure as f:
        _wire.report(errfd, f)
        return 125


def inner_setup(spec: Spec, ackfd: int = -1) -> None:
    """Inside every new namespace: hostname, ``lo`` up, then the mounts and a new root.

    ``ackfd``: the id maps are still being written by the runner; wait for them
    (:func:`_await_maps`) before the first step that may create files (mount points under a
    new root, bind mounts and tmpfs), else at the end.
    """
    flags = spec.flags
    # Before the mounts: after pivot_root the interpreter's own library may be out of reach.
    if spec.hostname is not None:
        _step("sethostname", repr(spec.hostname), _linux.sethostname, spec.hostname)
    if flags & _linux.CLONE_NEWNET:
        _step("loopback", "lo up", _linux.set_loopback_up)

    def await_maps() -> None:
        nonlocal ackfd
        if ackfd != -1:
            _await_maps(ackfd)
            ackfd = -1

    if flags & _linux.CLONE_NEWNS:
        # Private propagation first: nothing we mount may leak back to the host.
        _step("private", "/", _linux.mount, None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
        _mounts.mount_all(spec, await_maps)
    await_maps()


# (environment, resolved program path or None) worked out by the runner before it cloned:
# work done before the clone costs no copy-on-write faults afterwards. See prepare/forget.
_ready: tuple[Env, str | None] | None = None


def prepare(spec: Spec) -> None:
    """In the runner, before cloning: the workload's environment and program path.

    The inherited environment is taken as bytes (``os.environb``): ``posix_spawn`` and
    ``execve`` use them as they are, where str would be encoded again in the child.
    """
    global _ready
    env: Env
    if spec.env is not None:
        env = dict(spec.env)
    elif spec.entry is None:
        env = dict(os.environb)
    else:
        env = dict(os.environ)
    path = None
    if spec.argv is not None and spec.root is None and spec.cwd is None:
        path = find_program(spec.argv[0], env)
    _ready = (env, path)


def forget() -> None:
    """In the runner, once the run is over: drop what :func:`prepare` worked out."""
    global _ready
    _ready = None


def _prepare_exec(spec: Spec) -> Env:
    if spec.cwd is not None:
        _step("chdir", spec.cwd, os.chdir, spec.cwd)
    elif spec.root:
        try:
            os.chdir(os.environ.get("PWD") or "/")
        except OSError:
            os.chdir("/")
    if _ready is not None:
        return _ready[0]
    return dict(os.environ) if spec.env is None else dict(spec.env)


def _child_setup(spec: Spec, errfd: int, program: str | None) -> None:
    """In the workload's process before its exec: a session of its own (with the pty as its
    controlling terminal, when it has one), the signal state the caller had, and the sandbox
    (``_sandbox.enter``: limits, capabilities, no_new_privs, Landlock, seccomp last).

    A step that fails is reported to the runner (which raises the typed error) and the process
    exits: 126 for the session or its terminal, 125 for the sandbox.
    """
    try:
        os.setsid()
        if spec.pty:
            import fcntl

            fcntl.ioctl(0, _TIOCSCTTY, 0)  # the slave, on stdin; we are its session's leader now
    except OSError as e:
        # Not the command's fault: say what did fail (the session or its terminal).
        what = "the workload's session with its pty as controlling terminal"
        _wire.report(errfd, Failure("set up", e.errno or 0, 0, what))
        os._exit(126)
    for sig in _SIGDEF:
        _signal.signal(sig, _signal.SIG_DFL)
    _pid1.restore(spec.sigmask)
    if spec.sandbox is not None:
        from reexec_core.namespaces import _sandbox

        try:
            _sandbox.enter(spec.sandbox, program)
        except Failure as f:
            _wire.report(errfd, f)
            os._exit(125)
        except Exception as e:  # a bug: said as one, never an exec without the sandbox
            _wire.report(errfd, _wire.crashed("the workload's sandbox set-up", e))
            os._exit(125)


def start_workload(spec: Spec, errfd: int) -> int:
    """Start the workload as our child, in a session of its own; return its pid."""
    env = _prepare_exec(spec)
    if spec.entry is not None:
        return _start_entry(spec, env, errfd)
    assert spec.argv is not None
    argv = spec.argv
    path = _ready[1] if _ready is not None and _ready[1] is not None else None
    if path is None:
        path = find_program(argv[0], env)
    if spec.pty or spec.sandbox is not None:
        return _fork_exec(spec, errfd, path, argv, env)
    try:
        return os.posix_spawn(
            path,
            argv,
            env,
            setsid=True,
            setsigmask=spec.sigmask,
            setsigdef=_SIGDEF,
        )
    except OSError as e:
        raise Failure("exec", e.errno or 0, 0, argv[0]) from e


def _fork_exec(spec: Spec, errfd: int, path: str, argv: list[str], env: Env) -> int:
    """Fork the workload's process, set it up in Python, then exec: posix_spawn cannot make a
    pty the controlling terminal *before* the exec (or a shell checking its terminal at start
    stops itself), nor apply the sandbox.

    An exec that fails is reported to the runner like posix_spawn's failure (the runner raises
    the ``CommandError``; the caller decides what to print), and the child exits 127 for a
    command not found, 126 otherwise, as a shell does.
    """
    pid = os.fork()
    if pid == 0:
        try:
            _child_setup(spec, errfd, path)
            os.execve(path, argv, env)
        except OSError as e:
            _wire.report(errfd, _exec_failure(spec, e.errno or 0, argv[0]))
            os._exit(127 if e.errno == ENOENT else 126)
        finally:
            os._exit(127)
    return pid


def _exec_failure(spec: Spec, errno: int, name: str) -> Failure:
    """The workload's exec failed: said with the ids it ran as, when those are not the caller's
    (a root caller's strict preset: a program under a root-only directory is out of reach)."""
    if errno == EACCES and spec.sandbox is not None and spec.sandbox["setid"] is not None:
        name += (
            " as nobody (the strict preset runs a root caller's workload as uid 65534 on the "
            "host, who must be able to read and run it; or give map_root to run it as root)"
        )
    return Failure("exec", errno, 0, name)


def find_program(name: str, env: Env) -> str:
    """Search ``PATH`` of ``env`` (str or bytes) like execvp(3); ``name`` when not found.

    ``os.execvpe`` would do it, but ``os.get_exec_path`` imports ``warnings`` (~1 ms) in
    every setup process.
    """
    if "/" in name:
        return name
    raw = env.get("PATH", env.get(b"PATH"))
    search = os.defpath if raw is None else os.fsdecode(raw)
    for entry in search.split(os.pathsep):
        candidate = os.path.join(entry or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return name


def _start_entry(spec: Spec, env: dict[str, str], errfd: int) -> int:
    import reexec_core

    assert spec.entry is not None
    name, *args = spec.entry
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    # The Command is made here, in PID 1, so the child's parent check sees the right parent.
    cmd = reexec_core.command(name, *args)
    os.environ.clear()
    os.environ.update(saved)
    try:
        proc = cmd.popen(
            env=env,
            preexec_fn=lambda: _child_setup(spec, errfd, None),
            close_fds=False,
            restore_signals=True,
        )
    except OSError as e:
        raise _exec_failure(spec, e.errno or 0, spec.name) from e
    return proc.pid


def entry_main(specfd: str, errfd: str, ackfd: str) -> int:
    """C1 started as a fresh interpreter (threaded callers): the registered entry point.

    The spec comes on the descriptor ``specfd`` (a memfd), never on the command line, which
    every user can read (``/proc/PID/cmdline``): it may hold ``env=`` secrets.
    """
    spec = Spec.from_json(_wire.read_spec(int(specfd)))
    if spec.sandbox is not None:
        from reexec_core.namespaces import _sandbox

        _sandbox.preload(spec.sandbox)
    _pid1.block()
    for fd in (int(errfd), int(ackfd), *_kept(spec)):
        os.set_inheritable(fd, False)  # passed to us, not to be passed on to the workload
    status = setup_main(spec, int(errfd), int(ackfd), 0)
    sys.stdout.flush()
    os._exit(status)
