"""Services that update themselves without refusing a connection or cutting a request.

A long-running server asks for its listening sockets with :func:`listeners` (inherited first:
systemd socket activation, or the previous build across the handover; else bound anew), serves
on them, and hands its main thread to :class:`Service` (or all of it to :func:`serve_http`,
the standard library's HTTP server made to drain)::

    from selfupdate import service

    class Handler(service.RequestHandler):        # http.server.BaseHTTPRequestHandler, HTTP/1.1
        def do_GET(self) -> None: ...

    sys.exit(service.serve_http(Handler, ["127.0.0.1:8080"], auto_update=3600))

The handover: an update (SIGHUP, or the periodic check) runs in a background thread while
the service keeps serving; only once the new build has passed its trial and is switched in
does the main thread tell systemd ``RELOADING=1``, stop accepting, let every request in flight
finish (up to a deadline), and ``exec`` the new build, same PID, with the listening sockets
kept open across the ``exec`` as file descriptors 3.. under systemd's own protocol
(``LISTEN_FDS``, ``LISTEN_PID``, ``LISTEN_FDNAMES``; sd_listen_fds(3)). The kernel queues new
connections meanwhile, so none is refused; the new build accepts them and says ``READY=1``.
Signals: SIGHUP checks for an update now (or, when the installed file was switched by hand,
as ``rollback`` does, hands over to it); SIGTERM (and SIGINT) stops accepting, drains, exits 0
(130). Nothing here is HTTP-specific but :class:`HTTPServer` and :class:`RequestHandler`
(from :mod:`selfupdate._drained_http`, re-exported here).

This module sits above :mod:`selfupdate.app` (it calls its ``update``); nothing imports it.
"""

from __future__ import annotations

import os
import socket

from selfupdate._drained_http import HTTPServer, RequestHandler
from selfupdate._drained_http import shown as _shown

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import FrameType

__all__ = [
    "HTTPServer",
    "RequestHandler",
    "Service",
    "listeners",
    "notify",
    "serve_http",
]

#: The first file descriptor of a socket handed over (sd_listen_fds(3): SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

# The listening sockets this process got from listeners(), with their names: what a handover
# passes on.
_OURS: list[tuple[socket.socket, str]] = []


# --------------------------------------------------------------------------------------------
# Listening sockets


def _inherited() -> list[tuple[socket.socket, str]]:
    """The sockets passed to this process (LISTEN_PID is ours), with their names; the
    variables are removed either way, so no child of this process takes them for its own."""
    from selfupdate.errors import ServiceError

    pid, count, names = (os.environ.pop(k, None) for k in _LISTEN_VARS)
    if pid is None or count is None or pid.strip() != str(os.getpid()):
        return []  # none, or meant for another process (a parent that did not remove them)
    if not count.isdigit():
        raise ServiceError(f"LISTEN_FDS={count!r} is not a number of file descriptors: the "
                           "service manager that started this program set it wrong")
    labels = names.split(":") if names else []
    found = []
    for i in range(int(count)):
        fd, name = LISTEN_FDS_START + i, (labels[i] if i < len(labels) else "unknown")
        try:
            sock = socket.socket(fileno=fd)
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError as e:
            raise ServiceError(f"file descriptor {fd} ({name}) was handed over as a listening "
                               f"socket but is none ({e.strerror}): check the .socket unit"
                               ) from None
        if sock.type != socket.SOCK_STREAM or not listening:
            raise ServiceError(f"file descriptor {fd} ({name}) is a socket but not a listening "
                               "stream socket: use ListenStream= in the .socket unit")
        sock.set_inheritable(False)  # only a handover's exec passes it on
        sock.setblocking(True)  # the file description's flag is shared with whoever passed it
        found.append((sock, name))
    return found


def _parse(address: str) -> tuple[str, int]:
    """``HOST:PORT`` / ``[V6]:PORT`` / ``:PORT`` -> (host, port)."""
    from selfupdate.errors import ServiceError

    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or int(port) > 65535 or ":" in host and "." in host:
        raise ServiceError(f"{address!r} is not an address to listen on: give HOST:PORT, "
                           "e.g. 127.0.0.1:8080 or [::1]:8080", address)
    return host, int(port)


def _resolve(address: str) -> tuple[int, tuple[str, int]]:
    """The family and socket address that ``address`` names (the first getaddrinfo gives)."""
    from selfupdate.errors import ServiceError

    host, port = _parse(address)
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except OSError as e:
        raise ServiceError(f"cannot listen on {address}: the host name does not resolve "
                           f"({e.strerror or e})", address) from None
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def listeners(addresses: Sequence[str], *, backlog: int = 128) -> list[socket.socket]:
    """The listening sockets for ``addresses``, in their order: each one handed to this process
    (systemd socket activation, or the previous build across a handover) whose address it is,
    else a new one (``SO_REUSEADDR``, so a restart does not wait out TIME_WAIT).

    Call once, before serving. The sockets are not inheritable by ordinary children; a
    handover passes them on. An inherited socket matches an address when both name the same
    host and port (``HOST:0`` takes any port of that host).

    Raises:
        selfupdate.errors.ServiceError: an address that is not ``HOST:PORT`` or cannot be
            bound (in use, a privileged port), or a socket handed over whose address none of
            ``addresses`` names (fix the ``.socket`` unit or the addresses); what was handed
            over is closed then.
    """
    from selfupdate.errors import ServiceError

    wanted = [_resolve(a) for a in addresses]
    pool = _inherited()
    chosen: list[tuple[socket.socket, str] | None] = []
    for family, (host, port) in wanted:
        match = next((i for i, (s, _) in enumerate(pool) if s.family == family and
                      s.getsockname()[0] == host and port in (0, s.getsockname()[1])), None)
        chosen.append(pool.pop(match) if match is not None else None)
    if pool:
        stray = ", ".join(f"fd {s.fileno()} ({name}) on {_shown(s)}" for s, name in pool)
        for s, _ in pool + [c for c in chosen if c is not None]:
            s.close()
        raise ServiceError(f"the socket handed over to this program ({stray}) listens on an "
                           f"address none of the requested ones ({', '.join(addresses)}) names: "
                           "make the .socket unit's ListenStream= and the addresses agree",
                           stray)
    out: list[socket.socket] = []
    for address, (family, sockaddr), got in zip(addresses, wanted, chosen, strict=True):
        if got is None:
            try:
                sock = socket.create_server(sockaddr, family=family, backlog=backlog)
            except OSError as e:
                for s in out:
                    s.close()
                why = os.strerror(e.errno) if e.errno else str(e)  # create_server rewraps it
                raise ServiceError(f"cannot listen on {address}: {why}", address) from None
            got = (sock, "listen")
        out.append(got[0])
        _OURS.append(got)
    return out


def _exec_with_listeners(reexec: Callable[[], None]) -> None:
    """Run ``reexec`` (an ``exec`` of the new build) with our listeners as fds 3.. and the
    LISTEN_* variables set for it (same PID, so LISTEN_PID stays true)."""
    import fcntl

    n = len(_OURS)
    # Each listener first to a descriptor above the target range, so that moving one onto
    # 3+i never closes another not yet moved; dup2 makes the copy inheritable, the rest stay
    # close-on-exec.
    high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, LISTEN_FDS_START + n) for s, _ in _OURS]
    for i, fd in enumerate(high):
        os.dup2(fd, LISTEN_FDS_START + i, inheritable=True)
        os.close(fd)
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(n),
                      LISTEN_FDNAMES=":".join(name for _, name in _OURS))
    reexec()


# --------------------------------------------------------------------------------------------
# systemd's notification protocol (sd_notify(3))


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) to the service manager, one datagram.

    Returns:
        True if sent; False with no ``NOTIFY_SOCKET`` (not run by systemd as Type=notify) or
        when it cannot be reached (a service does not die of its manager's socket).
    """
    path = os.environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        path = "\0" + path[1:]  # an abstract socket (unix(7))
    elif not path.startswith("/"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(path)
            s.sendall("\n".join(fields).encode())
    except OSError:
        return False
    return True


def _monotonic_usec() -> str:
    import time

    # systemd compares it with its own CLOCK_MONOTONIC (sd_notify(3), RELOADING=1).
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


# --------------------------------------------------------------------------------------------
# The service: signals, checks, drain, handover


class Service:
    """A long-running service's main loop: signals, the update checks, the drain, the handover.

    Create it (it gets the listening sockets: :attr:`sockets`), start serving on them in
    threads, register how to drain with :meth:`on_drain`, then call :meth:`run` from the main
    thread. Updates are checked in a background thread (SIGHUP, and every ``auto_update``
    seconds with 10 % jitter, ``selfupdate._jitter``) while the service serves; a committed
    update is handed over by the main thread, never by the thread that updated.

    Args:
        addresses: for :func:`listeners`.
        auto_update: seconds between periodic checks (a finite number > 0), or None for none.
        repo_url: the release repository (None: the app's default).
        drain_timeout: seconds the drain callbacks get, in all, before the ``exec`` (or the
            exit) goes ahead anyway.
        log: where one-line messages go; default stderr as ``NAME: ...``.

    Raises:
        selfupdate.errors.ServiceError: as :func:`listeners`.
        ValueError: ``auto_update`` or ``drain_timeout`` not a finite number > 0.
    """

    def __init__(self, addresses: Sequence[str], *, auto_update: float | None = None,
                 repo_url: str | None = None, drain_timeout: float = 30.0,
                 log: Callable[[str], None] | None = None) -> None:
        import math

        for what, value in (("auto-update interval", auto_update), ("drain timeout",
                                                                    drain_timeout)):
            if value is not None and not (isinstance(value, int | float) and
                                          math.isfinite(value) and value > 0):
                raise ValueError(f"the {what} must be a finite number > 0, got {value!r}")
        from selfupdate import app

        self._app = app
        self.sockets = listeners(addresses)
        self.auto_update, self.repo_url, self.drain_timeout = auto_update, repo_url, drain_timeout
        self._log = log or app._note
        self._drains: list[Callable[[float], None]] = []
        # The main loop blocks on the read end; a signal handler must never block on the
        # write end (it runs in the main thread, which is the only reader).
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._wake_w, False)
        pyz = app.installed_path()
        self._pyz, self._ino = pyz, _inode(pyz)

    def on_drain(self, fn: Callable[[float], None]) -> None:
        """Register ``fn(deadline)``: stop accepting, let the work in flight finish, return
        (by ``deadline``, a :func:`time.monotonic` value). Called in the main thread, in the
        order registered, before a handover and on SIGTERM."""
        self._drains.append(fn)

    def _post(self, what: bytes) -> None:
        try:
            os.write(self._wake_w, what)
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already: the main loop is behind, not deaf

    def run(self) -> int:
        """Serve until SIGTERM / SIGINT (then drain and return 0 / 130); a committed update or
        a build switched in by hand replaces this process (same PID) and does not return.

        Must be called from the main thread (signal handlers live there)."""
        import signal
        import threading

        # A process-directed signal may land in any thread, and then does not interrupt the
        # main thread's read below: the C-level handler writes its number to the wake-up pipe
        # whichever thread it interrupts (signal.set_wakeup_fd), and that read sees it.
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _ignore)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        # A handover blocked SIGHUP across the exec (its default would kill a service that is
        # still starting); one that arrived meanwhile is delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        self._check_now = threading.Event()
        threading.Thread(target=self._checker, name="update-check", daemon=True).start()
        from selfupdate.app import version

        notify("READY=1", f"STATUS=serving {version()}", f"MAINPID={os.getpid()}")
        busy = reloading = False
        while True:
            for byte in os.read(self._wake_r, 64):
                what = _SIGNAL_CODES.get(byte) or chr(byte)
                if what in "ti":
                    notify("STOPPING=1")
                    self._drain()
                    return 0 if what == "t" else 130
                if what == "h":
                    # During a periodic check SIGHUP only joins it: the check running answers
                    # the reload (Type=notify-reload waits for RELOADING=1, then READY=1).
                    if not reloading:
                        notify("RELOADING=1", _monotonic_usec())
                        reloading = True
                    if not busy:
                        busy = True
                        self._check_now.set()
                elif what == "c":  # a periodic check began
                    busy = True
                elif what == "r":  # a check ended: nothing to hand over
                    busy = False
                    if reloading:
                        notify("READY=1", f"STATUS=serving {version()}")
                        reloading = False
                elif what == "x":
                    if not reloading:
                        notify("RELOADING=1", _monotonic_usec())
                    self._handover()

    def _checker(self) -> None:
        """The background thread: wait for SIGHUP or the period, check, tell the main loop."""
        import random

        from selfupdate._jitter import next_wait
        from selfupdate.errors import SelfUpdateError

        rng, seen = random.Random(), set()
        while True:
            wait = None if self.auto_update is None else next_wait(self.auto_update, rng)
            asked = self._check_now.wait(wait)
            self._check_now.clear()
            if not asked:
                self._post(b"c")
            try:
                if self._switched_by_hand():
                    self._why = "the installed build was switched"
                    self._post(b"x")
                    return
                out = self._app.update(self.repo_url, handover="none")
            except SelfUpdateError as e:  # a failed trial among them: nothing changed
                if asked or str(e) not in seen:
                    seen.add(str(e))
                    self._log(f"update check: {e}")
            except Exception as e:  # keep serving whatever the updater hit
                self._log(f"update check: unexpected error: {e!r}")
            else:
                if out.status == "updated":
                    self._why = f"updated {out.old} -> {out.new}"
                    self._post(b"x")
                    return
            self._post(b"r")

    def _switched_by_hand(self) -> bool:
        """The installed file is not the one this process started from (``rollback``, or an
        ``update`` run by hand, switched it: ``os.replace`` gives it a new inode)."""
        return self._ino is not None and _inode(self._pyz) not in (self._ino, None)

    def _drain(self) -> None:
        import time

        deadline = time.monotonic() + self.drain_timeout
        for fn in self._drains:
            fn(deadline)

    def _handover(self) -> None:
        """In the main thread: drain, then exec the installed build with our listeners."""
        import signal

        self._log(f"{self._why}: handing over to the new build (pid {os.getpid()})")
        # Before the drain, not in the pause: only extractions no build holds are removed.
        self._app._clean_shiv()
        self._drain()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            _exec_with_listeners(self._app._reexec_self)
        except OSError as e:
            # The servers are drained and the listeners moved: exit, and the service manager
            # starts the installed build afresh.
            self._log(f"cannot start the new build ({e.strerror or e}); exiting")
            os._exit(1)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the wake-up pipe carries the signal to the main loop."""


# signal number -> the main loop's code for it (its own codes are letters, never these bytes)
_SIGNAL_CODES = {1: "h", 15: "t", 2: "i"}  # SIGHUP, SIGTERM, SIGINT: the same on every Linux


def _inode(path: object) -> int | None:
    try:
        return os.stat(path).st_ino if path is not None else None  # type: ignore[arg-type]
    except OSError:
        return None


def serve_http(handler: type[RequestHandler], addresses: Sequence[str], **service: object) -> int:
    """Serve ``handler`` on ``addresses`` (one :class:`HTTPServer` each, in threads) under a
    :class:`Service` (``service``: its keyword arguments); returns :meth:`Service.run`'s status.

    Raises:
        selfupdate.errors.ServiceError: as :func:`listeners`.
    """
    import threading

    svc = Service(addresses, **service)  # type: ignore[arg-type]
    for sock in svc.sockets:
        server = HTTPServer(sock, handler, svc._log)
        svc.on_drain(server.drain)
        threading.Thread(target=server.serve_forever, name=f"http {_shown(sock)}",
                         daemon=True).start()
    return svc.run()
