"""The standard library's HTTP server, made to drain: the HTTP half of :mod:`selfupdate.service`
(which re-exports :class:`HTTPServer` and :class:`RequestHandler`; import them from there).

During a drain every answer says ``Connection: close``, an idle keep-alive connection is closed
at its request boundary, a request in flight is answered, and the listening socket is left
open (the handover passes it on).
"""

from __future__ import annotations

import http.server
import os
import socket
import socketserver
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["FIRST_REQUEST_GRACE", "IDLE_GRACE", "HTTPServer", "RequestHandler", "shown"]


def shown(sock: socket.socket) -> str:
    """A socket's address as messages show it (``[::1]:80``, ``127.0.0.1:80``)."""
    name = sock.getsockname()
    if isinstance(name, tuple):
        return f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"
    return str(name) or "an unnamed socket"


class RequestHandler(http.server.BaseHTTPRequestHandler):
    """``BaseHTTPRequestHandler`` for :class:`HTTPServer`: HTTP/1.1 (keep-alive), no access
    log (override ``log_request``), and during a drain every response says
    ``Connection: close`` and an idle connection is closed at its request boundary."""

    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: the headers and the body are two writes, and Nagle's algorithm would hold
    # the second until the client's delayed ACK (~40 ms) on a keep-alive connection.
    disable_nagle_algorithm = True
    timeout = 60.0  # seconds an idle keep-alive connection may wait for its next request
    server: HTTPServer

    def handle_one_request(self) -> None:
        self.server._idle(self.connection)  # waiting for a request: the drain may end it here
        super().handle_one_request()

    def parse_request(self) -> bool:
        self.server._busy(self.connection)  # a request arrived: it will be answered
        return super().parse_request()

    def end_headers(self) -> None:
        if self.server.draining and not self.close_connection:
            self.send_header("Connection", "close")
        super().end_headers()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


#: Seconds a drain gives a keep-alive connection that is idle (when the drain starts, or once
#: its answer is out) to send one more request, answered with ``Connection: close``: a client
#: under load sends within it, and its connection then ends cleanly instead of racing a close
#: (RFC 9112, 9.6).
IDLE_GRACE = 0.05
#: Seconds a drain gives a connection accepted but not yet sent anything to send its first.
FIRST_REQUEST_GRACE = 1.0


class HTTPServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server on a listening socket it is given (from :func:`listeners`),
    with :meth:`drain` for :meth:`Service.on_drain`; its handler derives from
    :class:`RequestHandler`. The listening socket is never closed by it.

    Args:
        sock: the listening socket.
        handler: the request handler class.
        log: where a drain that ran out of time says so (default: stderr).
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, handler: type[RequestHandler],
                 log: Callable[[str], None] | None = None) -> None:
        import threading

        if not (isinstance(handler, type) and issubclass(handler, RequestHandler)):
            raise TypeError("HTTPServer's handler must derive from selfupdate.service."
                            "RequestHandler (it tracks idle connections for the drain)")
        socketserver.BaseServer.__init__(self, sock.getsockname(), handler)
        self.socket = sock
        self.server_name = shown(sock).rpartition(":")[0]
        self.server_port = self.server_address[1]
        self.draining = False
        self._log = log or (lambda m: print(f"{os.path.basename(sys.argv[0])}: {m}",
                                            file=sys.stderr, flush=True))
        self._lock = threading.Condition()
        # every open connection: ("fresh" (no request yet) | "idle" (between two) | "busy",
        # since when, time.monotonic())
        self._conns: dict[socket.socket, tuple[str, float]] = {}
        self._wake_r, self._wake_w = socket.socketpair()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept until :meth:`drain` (which wakes this loop at once, not a poll later)."""
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ, "accept")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self.draining:
                for key, _ in sel.select():
                    if key.data == "accept" and not self.draining:
                        self._handle_request_noblock()  # type: ignore[attr-defined]

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that went away mid-answer is no server error: no traceback for it.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        import time

        with self._lock:
            self._conns[request] = ("fresh", time.monotonic())
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        super().shutdown_request(request)
        with self._lock:
            self._conns.pop(request, None)
            self._lock.notify_all()

    def _idle(self, conn: socket.socket) -> None:
        """``conn`` waits for its next request (a fresh one for its first)."""
        import time

        with self._lock:
            if self._conns.get(conn, ("",))[0] != "fresh":
                self._conns[conn] = ("idle", time.monotonic())
                self._lock.notify_all()  # a drain counts its grace from now

    def _busy(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns[conn] = ("busy", 0.0)

    def drain(self, deadline: float) -> None:
        """Stop accepting; let idle connections send one more request for
        :data:`IDLE_GRACE` seconds (fresh ones: :data:`FIRST_REQUEST_GRACE`), then close
        them; wait for every request in flight to be answered, or until ``deadline``
        (:func:`time.monotonic`)."""
        import time

        start = time.monotonic()
        grace = {"idle": IDLE_GRACE, "fresh": FIRST_REQUEST_GRACE}
        shut: set[socket.socket] = set()
        with self._lock:
            self.draining = True
            self._wake_w.send(b"x")
            while self._conns and (now := time.monotonic()) < deadline:
                ends = []
                for conn, (state, since) in self._conns.items():
                    if conn in shut or state not in grace:
                        continue
                    end = max(since, start) + grace[state]
                    if now < end:
                        ends.append(end)
                        continue
                    # The reader blocked on the next request line sees end of file; a request
                    # already received is still read and answered.
                    shut.add(conn)
                    try:
                        conn.shutdown(socket.SHUT_RD)
                    except OSError:
                        pass
                self._lock.wait(min([deadline, *ends]) - now)
            if self._conns:
                self._log(f"{len(self._conns)} connection(s) still busy at the drain deadline")
