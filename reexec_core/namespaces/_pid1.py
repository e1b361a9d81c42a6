"""PID 1's duties, and the relay between the runner and PID 1: one loop for both.

With a PID namespace the first process inside is its init (PID 1), as ``tini`` is in a
container. The kernel hands it every orphan of the namespace to reap, and kills the whole
namespace when it exits. Our init:

* reaps every child, not only the workload, so 200 orphaned grandchildren leave no zombies;
* forwards SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGTERM and SIGWINCH to the workload
  (a terminal's four, HUP/INT/QUIT/WINCH, to its whole process group, as a terminal would);
  a shell as PID 1 would ignore SIGTERM (the kernel drops signals PID 1 has no handler for),
  ours receives them because it keeps them blocked and takes them with ``sigwaitinfo``
  (signal(7): blocked signals are queued, never ignored);
* exits with the workload's status, 128+N when it was killed by signal N.

No process of ours but the runner is in the caller's terminal session (each calls
``setsid``, see ``_setup``), so a terminal's signals (Ctrl-C, Ctrl-\\, a hang-up) reach the
runner alone, which forwards them like any other: nothing is delivered twice.

Without a PID namespace there is no kernel to kill what the workload leaves behind; the
process that spawned it then is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``: orphans of the
workload are re-parented to it) with a catchable parent-death signal, :data:`DEATHSIG`, and
:func:`kill_descendants` ends the whole tree when the workload exits or the runner dies.

The relay (the process that created the namespaces and forked PID 1, and the runner itself)
runs the same loop with ``reap_all=False``: it waits for its one child and passes signals on.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no enum: signal costs ms
import os

from reexec_core.namespaces._spec import FORWARDED, SIGCHLD

WAITSET = (*FORWARDED, SIGCHLD)
_SIGKILL, _SIGWINCH = 9, 28
_TERMINAL = frozenset((1, 2, 3, 28))  # HUP INT QUIT WINCH: what a terminal signals
#: The parent-death signal of a supervisor without a PID namespace: caught (SIGKILL could not
#: be), so that it kills the workload's whole tree before it goes. SIGRTMAX: nobody else sends it.
DEATHSIG = 64

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def exit_code(status: int) -> int:
    """Turn a wait status into an exit code: the exit status, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def block() -> set[int]:
    """Block the forwarded signals and SIGCHLD in this thread; return the previous mask."""
    return set(_signal.pthread_sigmask(_signal.SIG_BLOCK, WAITSET))


def current_mask() -> set[int]:
    """This thread's signal mask."""
    return set(_signal.pthread_sigmask(_signal.SIG_BLOCK, ()))


def restore(mask: set[int] | list[int]) -> None:
    """Set this thread's signal mask to ``mask``."""
    _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)


def default_sigchld() -> object:
    """Set SIGCHLD to its default if it is ignored (auto-reaping); return what to restore."""
    old = _signal.getsignal(SIGCHLD)
    if old == _signal.SIG_IGN:
        try:
            _signal.signal(SIGCHLD, _signal.SIG_DFL)
        except ValueError:  # not the main thread: Python allows it only there
            return None
        return old
    return None


def restore_sigchld(old: object) -> None:
    """Undo :func:`default_sigchld`."""
    if old is not None:
        _signal.signal(SIGCHLD, old)


def block_deathsig() -> None:
    """Block :data:`DEATHSIG` (before it is made the parent-death signal: it must queue)."""
    _signal.pthread_sigmask(_signal.SIG_BLOCK, (DEATHSIG,))


def supervise(
    child: int,
    reap_all: bool,
    forward: bool = True,
    on_winch: Callable[[], None] | None = None,
    procfd: int | None = None,
    group: bool = False,
) -> int:
    """Wait for ``child`` with the signals of ``WAITSET`` blocked; return its exit code.

    Args:
        child: the pid to wait for (the workload, or the next process in the chain).
        reap_all: reap every child (PID 1), not only ``child``.
        forward: pass signals sent to this process on to ``child``.
        on_winch: call this on SIGWINCH instead of forwarding it (the runner's pty relay).
        procfd: not None: this process is the subreaper of a workload without a PID
            namespace, and this a ``/proc`` directory descriptor (-1: none) to find its tree
            with; the leftovers are killed when the workload exits, and everything when
            :data:`DEATHSIG` (the runner died) arrives.
        group: ``child`` is the workload, leader of its own process group: a terminal's
            signals (HUP, INT, QUIT, WINCH) go to that whole group, as a terminal sends
            them, so ``sh -c 'sleep 60'`` ends on Ctrl-C at once, not after the sleep.

    Returns:
        The child's exit status, or 128+N if signal N killed it.
    """
    waitset = WAITSET if procfd is None else (*WAITSET, DEATHSIG)
    reap_all = reap_all or procfd is not None
    while True:
        info = _signal.sigwaitinfo(waitset)
        sig = info.si_signo
        if sig == DEATHSIG and procfd is not None:
            try:
                os.killpg(child, _SIGKILL)  # not reaped yet: the group id is still its own
            except OSError:
                pass
            kill_descendants(procfd)
            return 128 + _SIGKILL
        if sig != SIGCHLD:
            if sig == _SIGWINCH and on_winch is not None:
                on_winch()
            elif forward:
                try:
                    # Not reaped yet: its pid, and so its group id, cannot have been reused.
                    if group and sig in _TERMINAL:
                        os.killpg(child, sig)
                    else:
                        os.kill(child, sig)
                except ProcessLookupError:
                    pass
            continue
        while True:
            try:
                pid, status = os.waitpid(-1 if reap_all else child, os.WNOHANG)
            except ChildProcessError:
                # No child left: someone else reaped ours (SIGCHLD ignored, or another
                # waitpid in this process). Its status is lost; never wait forever.
                return 255
            if pid == 0:
                break
            if pid == child:
                if procfd is not None:
                    kill_descendants(procfd)
                elif reap_all:
                    _reap_remaining()
                return exit_code(status)


def kill_descendants(procfd: int) -> None:
    """SIGKILL every descendant of this subreaper, until none is left, and reap them all.

    Each round kills the children ``/proc`` lists (``ppid`` is ours; none is reaped before it
    is killed, so no pid can have been reused) and waits for one to go; the orphans of the
    killed are re-parented to us and are next. Without a usable ``/proc`` only what has
    exited is reaped.
    """
    try:
        me = os.readlink("self", dir_fd=procfd)
    except OSError:
        me = ""
    if me != str(os.getpid()):  # no /proc, or one of another PID namespace: pids differ
        _reap_remaining()
        return
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            continue
        children = _children(procfd, me)
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, _SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _children(procfd: int, me: str) -> list[int]:
    out = []
    for name in os.listdir(procfd):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"{name}/stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=procfd)
            try:
                stat = os.read(fd, 4096)
            finally:
                os.close(fd)
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == me.encode():
            out.append(int(name))
    return out


def _reap_remaining() -> None:
    """Reap what has already exited besides the workload (the rest dies with PID 1)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
