"""PID 1's duties, and the relay between the runner and PID 1: one loop for both.

With a PID namespace the first process inside is its init (PID 1), as ``tini`` is in a
container. The kernel hands it every orphan of the namespace to reap, and kills the whole
namespace when it exits. Our init:

* reaps every child, not only the workload, so 200 orphaned grandchildren leave no zombies;
* forwards SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGTERM and SIGWINCH to the workload;
  a shell as PID 1 would ignore SIGTERM (the kernel drops signals PID 1 has no handler for),
  ours receives them because it keeps them blocked and takes them with ``sigwaitinfo``
  (signal(7): blocked signals are queued, never ignored);
* exits with the workload's status, 128+N when it was killed by signal N.

Signals a terminal generates (``si_code == SI_KERNEL``: Ctrl-C, Ctrl-\\, a resize, a hang-up)
go to the terminal's foreground process group. When the workload has the terminal it is that
group alone (see ``_setup.take_foreground``); otherwise it shares the group with the runner and
PID 1 and gets them directly too. Either way only signals sent with ``kill(2)`` are forwarded,
so a Ctrl-C is delivered once, not three times.

The relay (the process that created the namespaces and forked PID 1, and the runner itself)
runs the same loop with ``reap_all=False``: it waits for its one child and passes signals on.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no enum: signal costs ms
import os

from reexec_core.namespaces._spec import FORWARDED, SIGCHLD

_SI_KERNEL = 0x80
WAITSET = (*FORWARDED, SIGCHLD)


def exit_code(status: int) -> int:
    """Turn a wait status into an exit code: the exit status, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def block() -> set[int]:
    """Block the forwarded signals and SIGCHLD in this thread; return the previous mask."""
    return set(_signal.pthread_sigmask(_signal.SIG_BLOCK, WAITSET))


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


def supervise(child: int, reap_all: bool, forward: bool = True) -> int:
    """Wait for ``child`` with the signals of ``WAITSET`` blocked; return its exit code.

    Args:
        child: the pid to wait for (the workload, or the next process in the chain).
        reap_all: reap every child (PID 1), not only ``child``.
        forward: pass signals sent to this process on to ``child``.

    Returns:
        The child's exit status, or 128+N if signal N killed it.
    """
    while True:
        info = _signal.sigwaitinfo(WAITSET)
        sig = info.si_signo
        if sig != SIGCHLD:
            # SI_USER (0), SI_QUEUE (-1), SI_TKILL (-6): sent by a process. A terminal's
            # signals (SI_KERNEL) already went to the whole foreground process group.
            if forward and info.si_code != _SI_KERNEL:
                try:
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
                if reap_all:
                    _reap_remaining()
                return exit_code(status)


def _reap_remaining() -> None:
    """Reap what has already exited besides the workload (the rest dies with PID 1)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
