"""Shared helpers of the trusted-releases tests (no tests here): a real repository made by the
publisher, a real HTTP server on 127.0.0.1 serving it (with per-path misbehaviour for the
attacks), a forger that re-signs metadata the way an attacker holding some keys could, and
the "install" step a caller of the client performs.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from selfupdate.releases._trust import Release

Behaviour = Callable[[http.server.BaseHTTPRequestHandler], None]


# ---------------------------------------------------------------------------------------------
# HTTP server


class RepoServer:
    """Serve ``root`` on 127.0.0.1; ``overrides[path]`` replaces the answer for one URL path."""

    def __init__(self, root: Path, tls: ssl.SSLContext | None = None) -> None:
        self.root = root
        self.scheme = "https" if tls else "http"
        self.overrides: dict[str, Behaviour] = {}
        self.requests: list[str] = []
        self.sent: dict[str, int] = {}  # path -> body bytes written by a behaviour
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                outer.requests.append(path)
                behaviour = outer.overrides.get(path)
                try:
                    if behaviour is not None:
                        behaviour(self)  # sends "Connection: close" where it cuts short
                    else:
                        outer._static(self, path)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        # A client that hangs up on a misbehaving answer is the point of most tests: quiet.
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_port}"

    def _static(self, h: http.server.BaseHTTPRequestHandler, path: str) -> None:
        file = (self.root / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.root.resolve()) or not file.is_file():
            body = b"not found"
            h.send_response(404)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        size = file.stat().st_size
        h.send_response(200)
        h.send_header("Content-Length", str(size))
        h.end_headers()
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                h.wfile.write(chunk)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def status(code: int) -> Behaviour:
    def b(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(code)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return b


def body(data: bytes, *, length: int | None = None) -> Behaviour:
    """Answer 200 with ``data``; ``length`` = a different Content-Length (truncation)."""

    def b(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data) if length is None else length))
        if length is not None:
            h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    return b


def redirect(location: str) -> Behaviour:
    def b(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return b


def endless(server: RepoServer, path: str, limit: int = 1 << 30) -> Behaviour:
    """Send data forever (no Content-Length) and count what was sent."""

    def b(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        chunk = b"\0" * 65536
        server.sent[path] = 0
        while server.sent[path] < limit:
            h.wfile.write(chunk)
            server.sent[path] += len(chunk)

    return b


def trickle(server: RepoServer, path: str, total: int, interval: float) -> Behaviour:
    """Announce ``total`` bytes, then send one byte per ``interval`` seconds."""

    def b(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(total))
        h.end_headers()
        server.sent[path] = 0
        for _ in range(total):
            h.wfile.write(b"x")
            h.wfile.flush()
            server.sent[path] += 1
            time.sleep(interval)

    return b


def free_port() -> int:
    """A port on 127.0.0.1 with nobody listening (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ---------------------------------------------------------------------------------------------
# Publisher-made repository


def make_build(path: Path, version: str, extra: bytes = b"") -> Path:
    """A small runnable .pyz-like zip that prints its version."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("__main__.py", f"print('build {version}')\n")
        if extra:
            z.writestr("payload.bin", extra)
    path.write_bytes(b"#!/usr/bin/env python3\n" + buf.getvalue())
    return path


@dataclass
class Pub:
    """A repository made by :mod:`selfupdate.releases.publish`, with its keys."""

    keys: Path
    repo: Path
    builds: Path
    app: str = "nsapp"
    published: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> bytes:
        """The initial trusted root, as a build embeds it."""
        return (self.repo / "metadata" / "1.root.json").read_bytes()

    def publish(
        self,
        version: str,
        *,
        channel: str = "stable",
        app: str | None = None,
        extra: bytes = b"",
        now: datetime | None = None,
    ) -> Release:
        from selfupdate.releases import publish

        build = make_build(
            self.builds / f"{app or self.app}-{channel}-{version}.pyz", version, extra
        )
        result = publish.publish(
            self.keys, self.repo, build, version, channel=channel, app=app, now=now
        )
        self.published[version] = result.release
        return result.release

    def target_file(self, release: Release) -> Path:
        d, _, name = release.target_path.rpartition("/")
        return self.repo / "targets" / d / f"{release.sha256}.{name}"

    def url_path(self, release: Release) -> str:
        d, _, name = release.target_path.rpartition("/")
        return f"/targets/{d}/{release.sha256}.{name}"

    def meta(self, name: str) -> Path:
        return self.repo / "metadata" / name

    def current(self, role: str) -> Path:
        """The file holding the current version of ``role``."""
        import json

        ts = json.loads(self.meta("timestamp.json").read_bytes())["signed"]
        if role == "timestamp":
            return self.meta("timestamp.json")
        snap_v = ts["meta"]["snapshot.json"]["version"]
        if role == "snapshot":
            return self.meta(f"{snap_v}.snapshot.json")
        snap = json.loads(self.meta(f"{snap_v}.snapshot.json").read_bytes())["signed"]
        if role == "targets":
            return self.meta(f"{snap['meta']['targets.json']['version']}.targets.json")
        return self.meta("root.json")


def make_pub(tmp_path: Path, app: str = "nsapp") -> Pub:
    from selfupdate.releases import publish

    pub = Pub(tmp_path / "keys", tmp_path / "repo", tmp_path / "builds", app)
    pub.builds.mkdir()
    publish.init(pub.keys, pub.repo, app)
    return pub


def forge(
    pub: Pub,
    *,
    targets: Callable[[Any], None] | None = None,
    snapshot: Callable[[Any], None] | None = None,
    timestamp: Callable[[Any], None] | None = None,
    signers: dict[str, Any] | None = None,
) -> None:
    """Change metadata as someone holding keys could: apply the mutators, bump versions and
    re-sign from the lowest changed role up to timestamp. ``signers`` replaces the real key
    of a role (e.g. with an attacker's key)."""
    from tuf.api.metadata import Metadata

    from selfupdate.releases import _keys
    from selfupdate.releases.publish import _meta_file, _Repo

    repo = _Repo(pub.repo)
    ts = repo.timestamp()
    snap = repo.snapshot(ts.signed)
    tg = repo.targets(snap.signed)
    keys = {r: (signers or {}).get(r) or _keys.load(pub.keys, r) for r in _keys.ROLES[1:]}

    def sign(md: Metadata[Any], role: str) -> None:
        md.signatures.clear()
        md.sign(keys[role])

    start = "targets" if targets else "snapshot" if snapshot else "timestamp"
    if start == "targets":
        assert targets is not None
        targets(tg.signed)
        tg.signed.version += 1
        sign(tg, "targets")
        snap.signed.meta["targets.json"] = _meta_file(tg, repo.write(tg))
    if start in ("targets", "snapshot"):
        if snapshot:
            snapshot(snap.signed)
        snap.signed.version += 1
        sign(snap, "snapshot")
        ts.signed.snapshot_meta = _meta_file(snap, repo.write(snap))
    if timestamp:
        timestamp(ts.signed)
    ts.signed.version += 1
    sign(ts, "timestamp")
    repo.write(ts)


# ---------------------------------------------------------------------------------------------
# Client side


@dataclass
class Install:
    """The caller's side: an installed file and the temporary file a download goes to."""

    path: Path
    original: bytes

    @property
    def staging(self) -> Path:
        return self.path.with_name(f".{self.path.name}.new")

    def update(self, client: Any, current_version: str) -> Any:
        """check -> download into the staging file -> replace the installed file."""
        release = client.check(current_version)
        if release is None:
            return None
        with open(self.staging, "wb") as f:
            client.download_to(release, f)
        os.replace(self.staging, self.path)
        return release

    def assert_untouched(self) -> None:
        assert self.path.read_bytes() == self.original, "the installed file was changed"
        if self.staging.exists():
            assert self.staging.stat().st_size == 0, "unverified bytes were left for the caller"


def make_install(tmp_path: Path) -> Install:
    d = tmp_path / "install"
    d.mkdir()
    p = d / "nsapp.pyz"
    data = b"installed build 1.0.0\n"
    p.write_bytes(data)
    return Install(p, data)


def assert_sentence(message: str) -> None:
    """One plain sentence: one line, no traceback, ends with what to do (after a colon)."""
    assert message and "\n" not in message, message
    assert "Traceback" not in message, message
    assert not re.search(r"[.!?]\s+[A-Z]", message), f"more than one sentence: {message}"
    assert ": " in message, f"no 'what to do' part: {message}"
    assert len(message) < 600, message


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(var, raising=False)


def serve(root: Path, tls: ssl.SSLContext | None = None) -> Iterator[RepoServer]:
    server = RepoServer(root, tls)
    try:
        yield server
    finally:
        server.close()


def self_signed_cert(dir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key), as PEM files: the test's own CA."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "selfupdate test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = dir / "cert.pem", dir / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file
