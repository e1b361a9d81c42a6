"""``selfupdate.service`` without builds (issue 13): the listening sockets across an ``exec``
and from systemd socket activation, sd_notify, the HTTP server's drain, SIGHUP and SIGTERM.

Real processes, real sockets on 127.0.0.1, real ``systemd-socket-activate``. The whole update
handover under load, with real builds, is ``test_service_handover.py``.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfupdate import service

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# A program that gets its listener, and on "exec" hands it over to itself (stage 2), which
# serves one connection made while nobody accepted.
_HANDOVER = r"""
import os, sys
from selfupdate import service
stage, port = sys.argv[1], sys.argv[2]
socks = service.listeners([f"127.0.0.1:{port}"])
leak = {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
print(stage, os.getpid(), socks[0].getsockname()[1], socks[0].get_inheritable(), leak, flush=True)
if stage == "1":
    sys.stdin.readline()  # the test has connected and sent meanwhile
    service._exec_with_listeners(
        lambda: os.execv(sys.executable, [sys.executable, "-c", CODE,
                                          "2", port]))
conn, _ = socks[0].accept()
conn.sendall(conn.recv(100).upper() + b" from " + str(os.getpid()).encode())
conn.close()
"""


def test_a_listener_survives_the_exec_and_a_connection_made_meanwhile_is_served() -> None:
    port = _free_port()
    code = "CODE = " + repr(_HANDOVER) + "\n" + _HANDOVER
    p = subprocess.Popen([PY, "-c", code, "1", str(port)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert p.stdout is not None and p.stdin is not None
    try:
        first = p.stdout.readline().split(maxsplit=4)
        assert first[:4] == ["1", str(p.pid), str(port), "False"]  # bound anew, not inheritable
        # Nobody accepts now: the kernel queues the connection, it is not refused.
        client = socket.create_connection(("127.0.0.1", port), timeout=30)
        client.sendall(b"ping")
        p.stdin.write("go\n")
        p.stdin.flush()
        second = p.stdout.readline().split(maxsplit=4)
        # Same PID, same socket, the variables gone before anything else could inherit them.
        assert second[:4] == ["2", str(p.pid), str(port), "False"], second
        assert second[4].strip() == str(dict.fromkeys(("LISTEN_PID", "LISTEN_FDS",
                                                      "LISTEN_FDNAMES")))
        assert client.recv(100) == f"PING from {p.pid}".encode()
        client.close()
        assert p.wait(timeout=30) == 0
    finally:
        p.kill()
        p.wait()


_ACTIVATED = r"""
import os, sys
from selfupdate import service
from selfupdate.errors import ServiceError
try:
    socks = service.listeners(sys.argv[1:])
except ServiceError as e:
    print("ServiceError", e, flush=True)
    sys.exit(1)
print("fds", [s.fileno() for s in socks], os.environ.get("LISTEN_FDS"), flush=True)
conn, _ = socks[0].accept()
conn.sendall(b"served by " + str(os.getpid()).encode())
conn.close()
"""


def _activate(port: int, *addresses: str) -> subprocess.Popen[str]:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed (Debian: systemd)")
    return subprocess.Popen(
        [tool, "-l", f"127.0.0.1:{port}", "--fdname=http", PY, "-c", _ACTIVATED, *addresses],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)


def test_a_socket_activated_listener_is_used_and_its_variables_removed() -> None:
    port = _free_port()
    p = _activate(port, f"127.0.0.1:{port}")
    assert p.stdout is not None
    try:
        # systemd-socket-activate starts the program at the first connection, which the
        # program then serves on the socket it was handed (fd 3).
        client = _connect(port)
        assert p.stdout.readline().split() == ["fds", "[3]", "None"]
        assert client.recv(100) == f"served by {p.pid}".encode()
        assert p.wait(timeout=30) == 0
    finally:
        p.kill()
        p.wait()


def test_a_handed_over_socket_that_matches_no_address_is_refused_in_one_sentence() -> None:
    port, other = _free_port(), _free_port()
    p = _activate(port, f"127.0.0.1:{other}")
    assert p.stdout is not None
    try:
        _connect(port).close()
        line = p.stdout.readline()
        assert line == (
            f"ServiceError the socket handed over to this program (fd 3 (http) on "
            f"127.0.0.1:{port}) listens on an address none of the requested ones "
            f"(127.0.0.1:{other}) names: make the .socket unit's ListenStream= and the "
            "addresses agree\n")
        assert p.wait(timeout=30) == 1
    finally:
        p.kill()
        p.wait()


def _connect(port: int) -> socket.socket:
    import time

    for _ in range(300):  # the activator binds after it started
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=30)
        except ConnectionRefusedError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@pytest.mark.parametrize("bad", ["8080", "127.0.0.1:http", "127.0.0.1:70000", ""])
def test_an_address_that_is_not_host_port_is_one_sentence(bad: str) -> None:
    from selfupdate.errors import ServiceError

    with pytest.raises(ServiceError) as ei:
        service.listeners([bad])
    assert str(ei.value) == (f"{bad!r} is not an address to listen on: give HOST:PORT, e.g. "
                             "127.0.0.1:8080 or [::1]:8080")


def test_an_address_in_use_is_one_sentence() -> None:
    from selfupdate.errors import ServiceError

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ServiceError) as ei:
            service.listeners([f"127.0.0.1:{port}"])
    assert str(ei.value) == f"cannot listen on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize("abstract", [True, False])
def test_notify_sends_one_datagram_to_a_path_or_an_abstract_socket(
    abstract: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"selfupdate-test-{os.getpid()}-{id(sock)}"
            sock.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            sock.bind(str(tmp_path / "notify"))
            monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert service.notify("READY=1", "STATUS=serving 1.0")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving 1.0"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not service.notify("READY=1")  # not run by a service manager: nothing to tell


# --------------------------------------------------------------------------------------------
# The HTTP server's drain (in this process: real sockets, the server in threads)


class _Handler(service.RequestHandler):
    release = threading.Event()
    started = threading.Event()

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/slow":
            type(self).started.set()
            type(self).release.wait(60)
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(name="server")
def server_fixture() -> Iterator[service.HTTPServer]:
    sock = socket.create_server(("127.0.0.1", 0))
    handler = type("H", (_Handler,), {"release": threading.Event(), "started": threading.Event()})
    srv = service.HTTPServer(sock, handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    handler.release.set()
    sock.close()


def test_a_drain_finishes_the_request_in_flight_and_closes_idle_ones_at_a_boundary(
    server: service.HTTPServer,
) -> None:
    import time

    port = server.server_address[1]
    handler = server.RequestHandlerClass
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    idle.request("GET", "/first")
    first = idle.getresponse()
    assert first.read() == b"/first" and first.getheader("Connection") is None  # keep-alive
    slow = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    slow.request("GET", "/slow")
    assert handler.started.wait(30)  # type: ignore[attr-defined]
    drained = threading.Event()
    threading.Thread(target=lambda: (server.drain(time.monotonic() + 60), drained.set()),
                     daemon=True).start()
    # The idle keep-alive connection is closed cleanly (end of file, no reset, no bytes).
    assert idle.sock is not None
    assert idle.sock.recv(100) == b""
    assert not drained.is_set()  # the slow request is still being answered
    # Not accepted while draining, but not refused either: the kernel queues it.
    late = socket.create_connection(("127.0.0.1", port), timeout=30)
    handler.release.set()  # type: ignore[attr-defined]
    answer = slow.getresponse()
    assert answer.status == 200 and answer.read() == b"/slow"
    assert answer.getheader("Connection") == "close"  # told not to reuse it
    assert drained.wait(30)
    late.settimeout(0.2)
    with pytest.raises(TimeoutError):
        late.recv(1)  # still queued, never answered by this server
    late.close()


def test_a_handler_that_does_not_track_idle_connections_is_refused() -> None:
    import http.server

    with socket.create_server(("127.0.0.1", 0)) as sock, pytest.raises(TypeError):
        service.HTTPServer(sock, http.server.BaseHTTPRequestHandler)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Service.run: signals and notifications, from a checkout (no build to update to)

_SERVE = r"""
import sys
from selfupdate import app, service
app.configure("svc", "1.0", state_dir=sys.argv[2])
class H(service.RequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
sys.exit(service.serve_http(H, [sys.argv[1]]))
"""


def test_sighup_reloads_and_sigterm_stops_with_the_notifications(tmp_path: Path) -> None:
    port = _free_port()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_sock:
        notify_sock.bind(str(tmp_path / "notify"))
        notify_sock.settimeout(30)
        env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"))
        p = subprocess.Popen([PY, "-c", _SERVE, f"127.0.0.1:{port}", str(tmp_path / "state")],
                             env=env, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            ready = notify_sock.recv(4096).decode().splitlines()
            assert ready == ["READY=1", "STATUS=serving 1.0", f"MAINPID={p.pid}"]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"ok"
            p.send_signal(signal.SIGHUP)
            reloading = notify_sock.recv(4096).decode().splitlines()
            assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
            assert int(reloading[1].split("=")[1]) > 0
            # No build to update to here: one line says why, and the service is ready again.
            assert notify_sock.recv(4096).decode().splitlines() == [
                "READY=1", "STATUS=serving 1.0"]
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"ok"
            p.send_signal(signal.SIGTERM)
            assert notify_sock.recv(4096) == b"STOPPING=1"
            _, err = p.communicate(timeout=30)
            assert p.returncode == 0
            assert err.splitlines() == [
                "svc: update check: svc can update itself only when it runs as a single-file "
                "build (a shiv .pyz); this one runs from a source checkout"]
        finally:
            p.kill()
            p.wait()
