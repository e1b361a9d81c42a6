"""The processes that build the namespaces and start the workload in them.

Fast path (single-threaded caller), :func:`clone_main`::

    runner ──clone3(CLONE_NEW*)──> first process (PID 1 with a PID namespace): hostname,
      (writes its id maps)         lo up, mounts, /proc
                                     └─posix_spawn──> workload (PID 2): CMD / the entry point

Without a PID or time namespace the first process execs the workload itself. Where clone3 is
hidden (Docker's seccomp profile answers ENOSYS), :func:`setup_main` does the same the older
way::

    runner ──fork──> setup (C1): unshare(...); id map
                       └─fork──> init (C2, PID 1): the inside; spawns the workload

A threaded caller cannot fork safely, so the runner starts C1 as a fresh interpreter instead
(a registered entry point, see ``reexec_core.namespaces``), which then runs ``setup_main``.

Every process here dies with its parent: each sets ``PR_SET_PDEATHSIG`` to SIGKILL and then
checks that its parent is still there (``getppid()``, or EOF on a pipe only the parent holds
when the parent lies outside our PID namespace), and when PID 1 dies the kernel kills the rest
of its namespace. Failures before the workload runs go back to the runner over the *error
pipe* (close-on-exec, so a successful exec reads as EOF) as
``E op NUL errno NUL flags NUL detail``; the runner raises the typed error. ``M`` on the same
pipe asks the runner to write the uid/gid maps, answered by one byte on the *ack pipe*: on the
clone path always (with a user namespace), and the child goes on with its setup meanwhile, so
the runner reads a failure reported after the maps once the child has exited; on the fork path
for ranges (and a root caller's maps) only, the child waiting for the answer.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no enum: signal costs ms
import gc
import os
import sys

from reexec_core import _linux, _prctl
from reexec_core.namespaces import _init
from reexec_core.namespaces._spec import Spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    #: The workload's environment: str, or bytes (``os.environb``) when inherited.
    Env = dict[Any, Any]

_SIGKILL = 9
_SIGPIPE, _SIGXFSZ, _SIGTTOU = 13, 25, 22
#: Signals the workload starts with at their default action.
_SIGDEF = (*_init.WAITSET, _SIGPIPE, _SIGXFSZ)


class _Failed(Exception):
    """A setup step failed: carries what the runner needs to raise the typed error."""

    def __init__(self, op: str, errno: int, flags: int = 0, detail: str = "") -> None:
        super().__init__(op)
        self.op, self.errno, self.flags, self.detail = op, errno, flags, detail


def crashed(who: str, e: BaseException) -> _Failed:
    """A bug (not a refusal) in a setup process, described for the runner's error."""
    return _Failed("start", 0, 0, f"{who} ({type(e).__name__}: {e})")


def report(errfd: int, failure: _Failed) -> None:
    """Send a failure to the runner over the error pipe."""
    msg = f"E{failure.op}\0{failure.errno}\0{failure.flags}\0{failure.detail}".encode(
        "utf-8", "surrogateescape"
    )
    try:
        os.write(errfd, msg)
    except OSError:
        pass


def die_with_parent(parent: int) -> None:
    """Get SIGKILL when the parent dies; exit now if it already has (Go's runtime does this)."""
    _linux.set_pdeathsig(_SIGKILL)
    if parent and os.getppid() != parent:
        os._exit(128 + _SIGKILL)


def _step(op: str, detail: str, fn: object, *args: object, flags: int = 0) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as e:
        raise _Failed(op, e.errno or 0, flags, detail) from e


def setup_main(spec: Spec, errfd: int, ackfd: int, parent: int) -> int:
    """C1: create the namespaces, get the id maps written, then start PID 1 or the workload.

    Returns only the exit code to ``os._exit`` with (the workload's status, or 125 after a
    reported failure); on the no-fork path it does not return at all (exec).
    """
    try:
        die_with_parent(parent)
        flags = spec.flags
        _step("unshare", "", _linux.unshare_raw, flags, flags=flags)
        if spec.flags & _linux.CLONE_NEWUSER:
            if spec.parent_maps:
                os.write(errfd, b"M")
                if os.read(ackfd, 1) != b"\0":
                    return 125  # the runner failed to write them, and raises the error
            else:
                try:
                    _linux.write_id_maps("self", spec.uid_map, spec.gid_map, True)
                except OSError as e:
                    raise _Failed(e.filename or "uid_map", e.errno or 0, 0, "") from e
        os.close(ackfd)
        if not spec.needs_fork:
            inner_setup(spec)
            start_workload(spec, errfd, replace=True)
        alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            status = 125
            try:
                os.close(alive_w)
                status = init_main(spec, errfd, alive_r)
            except _Failed as f:
                report(errfd, f)
            except BaseException as e:  # noqa: B036 - must never return into the caller
                report(errfd, crashed("PID 1", e))
            finally:
                os._exit(status)
        os.close(errfd)
        os.close(alive_r)
        return _init.supervise(child, reap_all=False)
    except _Failed as f:
        report(errfd, f)
        return 125


def clone_main(spec: Spec, errfd: int, ackfd: int) -> int:
    """The child of ``clone3``: already inside every new namespace (PID 1 with a PID one).

    Asks the runner for its id maps, sets the inside up meanwhile, waits for the maps (which
    also proves the runner is still there), then execs the workload or, as PID 1, spawns and
    supervises it. Returns the exit code to ``os._exit`` with.
    """
    try:
        # Every page this copy of the interpreter writes is a copy-on-write fault: no
        # collection may walk the whole heap in here (the runner disabled it before cloning,
        # and built the arguments used below, see prepare() and _linux.preload()).
        gc.disable()
        _linux.set_pdeathsig(_SIGKILL)
        if spec.flags & _linux.CLONE_NEWUSER:
            # The runner owns this user namespace, so it may write our maps (one line of its
            # own ids after "deny" in setgroups, like unshare -r; ranges as root or through
            # newuidmap). It does so while we bring lo up and mount; see _await_maps.
            os.write(errfd, b"M")
        else:
            # getppid() is 0 in a new PID namespace: the runner is the only writer of the ack
            # pipe, so EOF there means it died before our parent-death signal was set.
            os.set_blocking(ackfd, False)
            try:
                if os.read(ackfd, 1) == b"":
                    os._exit(128 + _SIGKILL)
            except BlockingIOError:
                pass
            os.close(ackfd)
            ackfd = -1
        if spec.flags & _linux.CLONE_NEWPID:
            # _prctl.set_name, without its encoding work (bytes constants: fewer pages written).
            try:
                fd = os.open(b"/proc/self/comm", os.O_WRONLY)
                try:
                    os.write(fd, b"ns-init")
                finally:
                    os.close(fd)
            except OSError:
                pass
        inner_setup(spec, ackfd)
        if not spec.needs_fork:
            start_workload(spec, errfd, replace=True)
        child = start_workload(spec, errfd, replace=False)
        os.close(errfd)
        return _init.supervise(child, reap_all=True)
    except _Failed as f:
        report(errfd, f)
        return 125


def _await_maps(ackfd: int) -> None:
    """Wait for the runner's answer to our "M": the id maps are written (or it failed).

    The runner answers only after reading the "M" sent after ``PR_SET_PDEATHSIG``: an answer
    proves it was alive then (later, its death kills us); EOF means it died before.
    """
    answer = os.read(ackfd, 1)
    os.close(ackfd)
    if answer != b"\0":
        # "E": the runner could not write them and raises the error itself.
        os._exit(125 if answer else 128 + _SIGKILL)


def init_main(spec: Spec, errfd: int, alive_r: int) -> int:
    """C2, PID 1 of the new PID namespace: set up the inside, start the workload, supervise."""
    _linux.set_pdeathsig(_SIGKILL)
    # getppid() is 0 here (the parent is outside our PID namespace): ask the pipe instead.
    # Its only writer is C1: EOF means C1 is gone, "would block" that it is alive.
    os.set_blocking(alive_r, False)
    try:
        os.read(alive_r, 1)
    except BlockingIOError:
        pass
    else:
        os._exit(128 + _SIGKILL)
    os.close(alive_r)
    if spec.flags & _linux.CLONE_NEWPID:
        _prctl.set_name("ns-init")
    inner_setup(spec)
    child = start_workload(spec, errfd, replace=False)
    os.close(errfd)
    return _init.supervise(child, reap_all=True)


def inner_setup(spec: Spec, ackfd: int = -1) -> None:
    """Inside every new namespace: mounts, a fresh /proc, new root, hostname, ``lo`` up.

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
    if flags & _linux.CLONE_NEWNS:
        # Private propagation first: nothing we mount may leak back to the host.
        _step("private", "/", _linux.mount, None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
        prefix = spec.root or ""
        if ackfd != -1 and (spec.mounts or spec.root):
            _await_maps(ackfd)
            ackfd = -1
        if spec.root and not os.path.isdir(spec.root):
            raise _Failed("pivot_root", 0, 0, f"{spec.root}: it is not a directory")
        for kind, src, dst in spec.mounts:
            target = prefix + dst
            if kind == "tmpfs":
                _ensure_dir(target, kind, bool(spec.root))
                _step(
                    "tmpfs",
                    target,
                    _linux.mount,
                    "tmpfs",
                    target,
                    "tmpfs",
                    _linux.MS_NOSUID | _linux.MS_NODEV,
                    "mode=0755",
                )
                continue
            _ensure_target(src, target, kind, bool(spec.root))
            _step(
                kind,
                f"{src} on {target}",
                _linux.mount,
                src,
                target,
                None,
                _linux.MS_BIND | _linux.MS_REC,
            )
            if kind == "ro-bind":
                _step(kind, f"{src} on {target} read-only", _linux.make_readonly, target)
        if spec.proc:
            # Before pivot_root: the kernel lets a user namespace mount proc only while a
            # fully visible proc is in the mount namespace (mnt_too_revealing), as bwrap does.
            _ensure_dir(prefix + "/proc", "proc", bool(spec.root))
            _step(
                "proc",
                prefix + "/proc",
                _linux.mount,
                "proc",
                prefix + "/proc",
                "proc",
                _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC,
            )
        if spec.root:
            _pivot(spec.root)
    if ackfd != -1:
        _await_maps(ackfd)


def _ensure_dir(target: str, kind: str, create: bool) -> None:
    """A mount point must exist; under a new root (``create``) we make it, as bwrap does.

    Without a new root the mount point would be made on the host's own filesystem, which
    outlives the namespace: refuse instead.
    """
    if os.path.isdir(target):
        return
    if not create:
        raise _Failed(kind, 0, 0, f"{target}: the mount point does not exist (create it first)")
    _step(kind, f"{target} (creating the mount point)", os.makedirs, target)


def _ensure_target(src: str, target: str, kind: str, create: bool) -> None:
    if os.path.isdir(src) or not os.path.exists(src):
        _ensure_dir(target, kind, create)
    elif not os.path.exists(target):
        if not create:
            raise _Failed(kind, 0, 0, f"{target}: the mount point does not exist (create it first)")
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError as e:
            raise _Failed(kind, e.errno or 0, 0, f"{target} (creating the mount point)") from e


def _pivot(root: str) -> None:
    """Make ``root`` the new ``/`` (pivot_root(2), the ``"."``/``"."`` idiom), old root gone."""
    _step("pivot_root", root, _linux.mount, root, root, None, _linux.MS_BIND | _linux.MS_REC)
    _step("pivot_root", root, os.chdir, root)
    _step("pivot_root", root, _linux.pivot_root, ".", ".")
    _step("pivot_root", root, _linux.umount2, ".", _linux.MNT_DETACH)
    _step("pivot_root", root, os.chdir, "/")


# (environment, resolved program path or None) worked out by the runner before it cloned:
# work done before the clone costs no copy-on-write faults afterwards.
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


def _reset_for_exec(spec: Spec) -> None:
    """Give the workload the terminal (if asked) and the signal state the caller had.

    Called right before this process becomes the workload (no PID 1 between them): the
    signals the setup caught go back to their defaults and the caller's mask is restored.
    """
    if spec.foreground:
        take_foreground()
    for sig in _SIGDEF:
        _signal.signal(sig, _signal.SIG_DFL)
    _init.restore(spec.sigmask)


def start_workload(spec: Spec, errfd: int, replace: bool) -> int:
    """Start the workload: exec in place (``replace``) or spawn a child; return its pid."""
    env = _prepare_exec(spec)
    if spec.entry is not None:
        return _start_entry(spec, env, replace)
    assert spec.argv is not None
    argv = spec.argv
    path = _ready[1] if _ready is not None and _ready[1] is not None else None
    if path is None:
        path = find_program(argv[0], env)
    if replace:
        _reset_for_exec(spec)
        try:
            os.execve(path, argv, env)
        except OSError as e:
            _init.block()
            raise _Failed("exec", e.errno or 0, 0, argv[0]) from e
    if spec.foreground:
        return _fork_foreground(spec, path, argv, env)
    try:
        return os.posix_spawn(
            path,
            argv,
            env,
            setsigmask=spec.sigmask,
            setsigdef=_SIGDEF,
        )
    except OSError as e:
        raise _Failed("exec", e.errno or 0, 0, argv[0]) from e


def take_foreground() -> None:
    """Become a process group of our own and the terminal's foreground group (as tini -g).

    Then the terminal's Ctrl-C, Ctrl-\\ and resizes reach the workload alone, and a shell
    inside finds itself in the foreground (an interactive shell as the workload otherwise
    fails to restore the terminal's group, which lies outside its PID namespace, at exit).
    """
    try:
        os.setpgid(0, 0)
        # From a background group tcsetpgrp(3) raises SIGTTOU unless it is blocked.
        old = _signal.pthread_sigmask(_signal.SIG_BLOCK, (_SIGTTOU,))
        try:
            os.tcsetpgrp(0, os.getpgrp())
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, old)
    except OSError:
        pass


def _fork_foreground(spec: Spec, path: str, argv: list[str], env: Env) -> int:
    """Spawn the workload in the terminal's foreground: it must take it *before* its exec
    (posix_spawn cannot), or a shell checking its terminal at start stops itself."""
    pid = os.fork()
    if pid == 0:
        try:
            take_foreground()
            for sig in _SIGDEF:
                _signal.signal(sig, _signal.SIG_DFL)
            _init.restore(spec.sigmask)
            os.execve(path, argv, env)
        except OSError as e:
            msg = f"nsapp: cannot run {argv[0]}: {e.strerror}\n"
            os.write(2, msg.encode(errors="replace"))
            os._exit(127 if e.errno == 2 else 126)
        finally:
            os._exit(127)
    return pid


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


def _start_entry(spec: Spec, env: dict[str, str], replace: bool) -> int:
    import reexec_core

    assert spec.entry is not None
    name, *args = spec.entry
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    if replace:
        _reset_for_exec(spec)
        try:
            reexec_core.exec_into(name, *args)
        except OSError as e:
            _init.block()
            raise _Failed("exec", e.errno or 0, 0, spec.name) from e
    # The Command is made here, in PID 1, so the child's parent check sees the right parent.
    cmd = reexec_core.command(name, *args)
    os.environ.clear()
    os.environ.update(saved)

    def child_setup() -> None:
        if spec.foreground:
            take_foreground()
        _init.restore(spec.sigmask)

    try:
        proc = cmd.popen(env=env, preexec_fn=child_setup, close_fds=False, restore_signals=True)
    except OSError as e:
        raise _Failed("exec", e.errno or 0, 0, spec.name) from e
    return proc.pid


def entry_main(spec_json: str, errfd: str, ackfd: str) -> int:
    """C1 started as a fresh interpreter (threaded callers): the registered entry point."""
    spec = Spec.from_json(spec_json)
    _init.block()
    status = setup_main(spec, int(errfd), int(ackfd), 0)
    sys.stdout.flush()
    os._exit(status)
