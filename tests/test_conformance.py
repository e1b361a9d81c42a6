"""Smoke tests of ``python -m selfupdate.conformance`` (the TUF conformance client-under-test).

A small signed repository made with python-tuf's metadata API is served by a real HTTP
server on 127.0.0.1, and the CLI is run as a real process with the arguments the public
suite (tuf-conformance, CLIENT-CLI.md) passes. The full suite runs outside pytest: see
docs/conformance.md.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

REPO = Path(__file__).resolve().parent.parent
TARGET_NAME = "app/nsapp 1.0.pyz"  # a directory and a space: both need quoting in URLs
TARGET_DATA = b"release bytes\n" * 100


@dataclass
class Served:
    """A signed repository on disk, served over HTTP, and what the server saw."""

    root_dir: Path
    url: str
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, User-Agent)

    @property
    def metadata_url(self) -> str:
        return f"{self.url}/metadata/"

    @property
    def targets_url(self) -> str:
        return f"{self.url}/targets/"

    def target_file(self) -> Path:
        digest = hashlib.sha256(TARGET_DATA).hexdigest()
        directory, _, name = TARGET_NAME.rpartition("/")
        return self.root_dir / "targets" / directory / f"{digest}.{name}"


def _make_repository(root_dir: Path) -> bytes:
    """Write a consistent-snapshot repository with one target; return root v1's bytes."""
    signers = {
        role: CryptoSigner.generate_ed25519()
        for role in ("root", "targets", "snapshot", "timestamp")
    }
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    root = Root(expires=expires, consistent_snapshot=True)
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)
    targets = Targets(expires=expires)
    targets.targets[TARGET_NAME] = TargetFile.from_data(TARGET_NAME, TARGET_DATA, ["sha256"])
    targets_bytes = _sign(targets, signers["targets"])
    snapshot = Snapshot(expires=expires)
    snapshot.meta["targets.json"] = MetaFile(version=1)
    snapshot_bytes = _sign(snapshot, signers["snapshot"])
    timestamp = Timestamp(expires=expires)
    timestamp.snapshot_meta = MetaFile(version=1)
    root_bytes = _sign(root, signers["root"])

    meta = root_dir / "metadata"
    meta.mkdir(parents=True)
    (meta / "1.root.json").write_bytes(root_bytes)
    (meta / "1.targets.json").write_bytes(targets_bytes)
    (meta / "1.snapshot.json").write_bytes(snapshot_bytes)
    (meta / "timestamp.json").write_bytes(_sign(timestamp, signers["timestamp"]))
    digest = hashlib.sha256(TARGET_DATA).hexdigest()
    directory, _, name = TARGET_NAME.rpartition("/")
    (root_dir / "targets" / directory).mkdir(parents=True)
    (root_dir / "targets" / directory / f"{digest}.{name}").write_bytes(TARGET_DATA)
    return root_bytes


def _sign(signed: Signed, signer: CryptoSigner) -> bytes:
    md: Metadata[Any] = Metadata(signed)
    md.sign(signer)
    return md.to_bytes(JSONSerializer(compact=False))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A fresh signed repository served on 127.0.0.1, recording each request path."""
    root_dir = tmp_path / "repo"
    (tmp_path / "initial_root.json").write_bytes(_make_repository(root_dir))
    seen: list[tuple[str, str]] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("User-Agent", "")))
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(root_dir, f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _client(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m selfupdate.conformance ARGS`` from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "selfupdate.conformance", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _init(tmp_path: Path) -> Path:
    metadata_dir = tmp_path / "metadata"
    metadata_dir.mkdir()
    r = _client("--metadata-dir", metadata_dir, "init", tmp_path / "initial_root.json")
    assert r.returncode == 0, r.stderr
    return metadata_dir


def _download(
    served: Served, metadata_dir: Path, target_dir: Path, *names: str
) -> subprocess.CompletedProcess[str]:
    flags = [arg for name in names for arg in ("--target-name", name)]
    return _client(
        "--metadata-dir", metadata_dir, "--metadata-url", served.metadata_url, *flags,
        "--target-base-url", served.targets_url, "--target-dir", target_dir, "download",
    )  # fmt: skip


def _assert_one_sentence_error(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "failed" in lines[0], r.stderr


def test_init_installs_trusted_root_without_network(tmp_path: Path, served: Served) -> None:
    metadata_dir = _init(tmp_path)
    assert (metadata_dir / "root.json").read_bytes() == (
        tmp_path / "initial_root.json"
    ).read_bytes()
    assert served.requests == []


def test_refresh_stores_top_level_metadata_unversioned(tmp_path: Path, served: Served) -> None:
    metadata_dir = _init(tmp_path)
    r = _client("--metadata-dir", metadata_dir, "--metadata-url", served.metadata_url, "refresh")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in metadata_dir.glob("*.json")) == [
        "root.json", "snapshot.json", "targets.json", "timestamp.json",
    ]  # fmt: skip
    assert [p for p, _ in served.requests] == [
        "/metadata/2.root.json", "/metadata/timestamp.json",
        "/metadata/1.snapshot.json", "/metadata/1.targets.json",
    ]  # fmt: skip


def test_refresh_goes_through_our_fetcher(tmp_path: Path, served: Served) -> None:
    metadata_dir = _init(tmp_path)
    r = _client("--metadata-dir", metadata_dir, "--metadata-url", served.metadata_url, "refresh")
    assert r.returncode == 0, r.stderr
    # ngclient's default fetcher (urllib3) announces itself as "python-tuf/<version>".
    agents = {agent for _, agent in served.requests}
    assert agents and not any(a.startswith("python-tuf/") for a in agents), agents


def test_download_verifies_and_then_uses_the_cache(tmp_path: Path, served: Served) -> None:
    metadata_dir = _init(tmp_path)
    target_dir = tmp_path / "targets"
    target_dir.mkdir()
    r = _download(served, metadata_dir, target_dir, TARGET_NAME)
    assert r.returncode == 0, r.stderr
    assert [p.read_bytes() for p in target_dir.iterdir()] == [TARGET_DATA]
    fetched = [p for p, _ in served.requests if p.startswith("/targets/")]
    assert len(fetched) == 1

    r = _download(served, metadata_dir, target_dir, TARGET_NAME)
    assert r.returncode == 0, r.stderr
    assert [p for p, _ in served.requests if p.startswith("/targets/")] == fetched


def test_download_rejects_tampered_target(tmp_path: Path, served: Served) -> None:
    metadata_dir = _init(tmp_path)
    target_dir = tmp_path / "targets"
    target_dir.mkdir()
    served.target_file().write_bytes(TARGET_DATA.replace(b"release", b"evil!!!"))
    r = _download(served, metadata_dir, target_dir, TARGET_NAME)
    _assert_one_sentence_error(r)
    assert list(target_dir.iterdir()) == []


def test_download_stops_at_the_first_unknown_target(tmp_path: Path, served: Served) -> None:
    metadata_dir = _init(tmp_path)
    target_dir = tmp_path / "targets"
    target_dir.mkdir()
    r = _download(served, metadata_dir, target_dir, "no/such/file", TARGET_NAME)
    _assert_one_sentence_error(r)
    assert "no/such/file" in r.stderr
    assert list(target_dir.iterdir()) == []


def test_refresh_fails_cleanly_when_server_is_gone(tmp_path: Path, served: Served) -> None:
    metadata_dir = _init(tmp_path)
    # A port that was just free: nothing listens there.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _client(
        "--metadata-dir",
        metadata_dir,
        "--metadata-url",
        f"http://127.0.0.1:{port}/metadata/",
        "refresh",
    )
    _assert_one_sentence_error(r)
    assert sorted(p.name for p in metadata_dir.glob("*.json")) == ["root.json"]


def test_refresh_rejects_badly_signed_timestamp(tmp_path: Path, served: Served) -> None:
    metadata_dir = _init(tmp_path)
    # Change the signed content without re-signing it: the signature no longer matches.
    ts = served.root_dir / "metadata" / "timestamp.json"
    ts.write_bytes(ts.read_bytes().replace(b'"version": 1', b'"version": 2'))
    r = _client("--metadata-dir", metadata_dir, "--metadata-url", served.metadata_url, "refresh")
    _assert_one_sentence_error(r)
    assert not (metadata_dir / "timestamp.json").exists()


def test_refresh_without_init_fails_cleanly(tmp_path: Path, served: Served) -> None:
    r = _client("--metadata-dir", tmp_path, "--metadata-url", served.metadata_url, "refresh")
    _assert_one_sentence_error(r)
    assert "init" in r.stderr
    assert served.requests == []


def test_usage_error_exits_2(tmp_path: Path) -> None:
    r = _client("--metadata-dir", tmp_path, "refresh")
    assert r.returncode == 2
    assert "--metadata-url" in r.stderr
