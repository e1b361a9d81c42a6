"""A pty of the workload's own, relayed to the caller's terminal (as ``docker run -t``).

Why: a workload that shares the caller's controlling terminal can push bytes into its input
queue (``TIOCSTI``) and make the caller's shell run them outside the sandbox (bubblewrap's
CVE-2017-5226). So an interactive workload gets a new pty: it is the session leader of the
slave side, and only this relay, in the runner, touches the caller's terminal. ``TIOCSTI`` on
the slave reaches the workload's own input, nothing else.

The caller's terminal goes to raw mode while the relay runs, so its keys (Ctrl-C, Ctrl-Z,
Ctrl-D) travel as bytes to the slave, whose line discipline turns them into the workload's
own signals and job control; the slave starts with the caller's own settings and window size,
and follows every resize (the runner calls :meth:`Relay.resize` on SIGWINCH).
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time

_TIOCGWINSZ = 0x5413
_TIOCSWINSZ = 0x5414
_SIGTTOU = 22
_CHUNK = 65536
# After the workload is gone, what it wrote last is still in the pty: read it for at most
# this long (a background process that kept the slave open must not hold the caller).
_DRAIN_SECONDS = 2.0


class Relay:
    """One pty: ``slave`` goes to the workload; :meth:`start` relays until :meth:`stop`."""

    def __init__(self, tty: int, fds: list[int | None]) -> None:
        """Open the pty, with the settings and window size of the caller's terminal ``tty``.

        Args:
            tty: the caller's terminal (the workload's stdin), in our foreground.
            fds: the workload's stdin, stdout, stderr (None: ours); :attr:`stdio` is the
                same with the slave in place of each that is that terminal.

        Raises:
            OSError: no pty could be opened or set up.
        """
        import fcntl
        import termios

        self._tty = tty
        self._saved = termios.tcgetattr(tty)
        self.master, self.slave = os.openpty()
        try:
            os.set_inheritable(self.master, False)
            termios.tcsetattr(self.slave, termios.TCSANOW, self._saved)
            fcntl.ioctl(self.slave, _TIOCSWINSZ, fcntl.ioctl(tty, _TIOCGWINSZ, bytes(8)))
            self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        except BaseException:
            os.close(self.master)
            os.close(self.slave)
            raise
        real = [tty, _real(fds[1], 1), _real(fds[2], 2)]
        # Output goes to the caller's terminal through the first of stdout, stderr, stdin
        # that is that terminal (a redirected stdout keeps its redirection in the workload).
        self._out = next((fd for fd in real[1:] if _same_tty(fd, tty)), tty)
        self.stdio: list[int | None] = [
            self.slave if i == 0 or _same_tty(fd, tty) else fds[i] for i, fd in enumerate(real)
        ]
        self._thread: threading.Thread | None = None
        self._raw = False

    def start(self) -> None:
        """Put the caller's terminal in raw mode and relay in a thread (signals stay blocked:
        the thread inherits the runner's mask, so sigwaitinfo still sees them all)."""
        import termios
        import tty

        os.close(self.slave)
        self.slave = -1
        tty.setraw(self._tty, termios.TCSANOW)
        self._raw = True
        self._thread = threading.Thread(target=self._loop, name="pty-relay", daemon=True)
        self._thread.start()

    def resize(self) -> None:
        """Give the pty the caller's window size now (on SIGWINCH); the kernel then signals
        the pty's foreground process group."""
        import fcntl

        try:
            fcntl.ioctl(self.master, _TIOCSWINSZ, fcntl.ioctl(self._tty, _TIOCGWINSZ, bytes(8)))
        except OSError:
            pass

    def stop(self) -> None:
        """Let the relay copy what the workload wrote last, then restore the terminal."""
        import termios

        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join()
            self._thread = None
        if self._raw:
            import _signal  # type: ignore[import-not-found]

            # From a background process group (stopped and continued meanwhile) tcsetattr
            # raises SIGTTOU unless it is blocked.
            old = _signal.pthread_sigmask(_signal.SIG_BLOCK, (_SIGTTOU,))
            try:
                termios.tcsetattr(self._tty, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass
            finally:
                _signal.pthread_sigmask(_signal.SIG_SETMASK, old)
            self._raw = False
        for fd in (self.master, self.slave, self._stop_r, self._stop_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.master = self.slave = self._stop_r = self._stop_w = -1

    def _loop(self) -> None:
        os.set_blocking(self.master, False)
        pending = b""  # keys read from the caller, not yet taken by the pty
        reading = True  # the caller's terminal still gives input
        deadline: float | None = None
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return  # drained as long as we wait: a process that keeps writing loses
            rlist = [self.master, self._stop_r] if deadline is None else [self.master]
            if reading and len(pending) < _CHUNK:
                rlist.append(self._tty)
            wlist = [self.master] if pending else []
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                readable, writable, _ = select.select(rlist, wlist, [], timeout)
            except InterruptedError:
                continue
            if deadline is not None and not readable and not writable:
                return  # drained as long as we wait
            if self._stop_r in readable:
                # The workload is gone: copy what is left in the pty, then stop.
                deadline = time.monotonic() + _DRAIN_SECONDS
                reading = False
                pending = b""
                continue
            if self._tty in readable:
                try:
                    data = os.read(self._tty, _CHUNK)
                except OSError:
                    data = b""
                if data:
                    pending += data
                else:
                    reading = False
            if self.master in writable and pending:
                try:
                    pending = pending[os.write(self.master, pending) :]
                except BlockingIOError:
                    pass
                except OSError:
                    pending = b""
            if self.master in readable:
                try:
                    data = os.read(self.master, _CHUNK)
                except BlockingIOError:
                    continue
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    data = b""  # EIO: every slave descriptor is closed
                if not data:
                    if deadline is not None:
                        return
                    # The workload closed the slave but is still running: wait for stop.
                    os.read(self._stop_r, 1)
                    return
                _write_all(self._out, data)


def _real(fd: int | None, default: int) -> int:
    return default if fd is None else fd


def _same_tty(fd: int, tty: int) -> bool:
    try:
        if not os.isatty(fd):
            return False
        a, b = os.fstat(fd), os.fstat(tty)
    except OSError:
        return False
    return (a.st_rdev, a.st_ino, a.st_dev) == (b.st_rdev, b.st_ino, b.st_dev)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except OSError:
            return  # the caller's terminal is gone: nothing more to show
