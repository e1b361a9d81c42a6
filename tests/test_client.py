"""The update client's API and behaviour beyond the attacks: cheap import, the metadata cache
(repaired from the embedded root, never trusted blindly), proxies, the progress bar, input
validation, and the pure release choice of ``selfupdate.releases._trust``."""

from __future__ import annotations

import fcntl
import http.server
import io
import json
import os
import pty
import ssl
import struct
import subprocess
import sys
import termios
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _support_client import (
    Pub,
    RepoServer,
    assert_sentence,
    make_install,
    make_pub,
    no_proxy_env,  # noqa: F401 - fixture, used through pytestmark
    self_signed_cert,
    serve,
)

from selfupdate import errors
from selfupdate.releases._fetch import FetchConfig
from selfupdate.releases._trust import Release, check_release, newest_release, release_from_target
from selfupdate.releases.client import UpdateClient

pytestmark = pytest.mark.usefixtures("no_proxy_env")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def pub(tmp_path: Path) -> Pub:
    p = make_pub(tmp_path)
    p.publish("1.0.0")
    p.publish("2.0.0")
    return p


@pytest.fixture
def server(pub: Pub) -> Iterator[RepoServer]:
    yield from serve(pub.repo)


def client_for(pub: Pub, url: str, cache: Path, **kw: Any) -> UpdateClient:
    kw.setdefault("progress", False)
    return UpdateClient("nsapp", url, pub.root, cache_dir=cache, **kw)


def test_import_selfupdate_is_cheap() -> None:
    """``import selfupdate`` (and its errors) must not load tuf, requests or cryptography."""
    code = (
        "import sys, selfupdate, selfupdate.errors\n"
        "heavy = [m for m in ('tuf', 'requests', 'cryptography', 'urllib3', 'securesystemslib',"
        " 'packaging', 'platformdirs', 'tqdm') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
        "selfupdate.UpdateClient\n"
        "print('tuf' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["", "True"]  # nothing heavy at import; loaded on first use


def test_check_returns_newest_and_downloads_nothing(
    pub: Pub, server: RepoServer, tmp_path: Path
) -> None:
    c = client_for(pub, server.url, tmp_path / "c")
    rel = c.check("1.0.0")
    assert rel == pub.published["2.0.0"]
    assert not any(r.startswith("/targets/") for r in server.requests)
    assert c.check("2.0.0") is None
    assert c.check("2.0.0rc1") == rel  # PEP 440 ordering: 2.0.0 > 2.0.0rc1


def test_download_to_streams_verified_bytes(pub: Pub, server: RepoServer, tmp_path: Path) -> None:
    c = client_for(pub, server.url, tmp_path / "c")
    rel = c.check("1.0.0")
    assert rel is not None
    buf = io.BytesIO(b"prefix:")
    buf.seek(0, io.SEEK_END)
    c.download_to(rel, buf)
    assert buf.getvalue() == b"prefix:" + pub.target_file(rel).read_bytes()


def test_failed_download_truncates_back_to_start(
    pub: Pub, server: RepoServer, tmp_path: Path
) -> None:
    rel = pub.published["2.0.0"]
    f = pub.target_file(rel)
    f.write_bytes(f.read_bytes()[::-1])  # same length, wrong bytes: all written, then refused
    c = client_for(pub, server.url, tmp_path / "c")
    assert c.check("1.0.0") == rel
    buf = io.BytesIO(b"keep")
    buf.seek(0, io.SEEK_END)
    with pytest.raises(errors.TargetMismatchError):
        c.download_to(rel, buf)
    assert buf.getvalue() == b"keep"


def test_metadata_cache_lives_in_cache_dir_and_gives_rollback_protection(
    pub: Pub, server: RepoServer, tmp_path: Path
) -> None:
    cache = tmp_path / "state" / "tuf"
    client_for(pub, server.url, cache).check("1.0.0")
    names = {p.name for p in (cache / "metadata").iterdir()}
    assert {"root.json", "timestamp.json", "snapshot.json", "targets.json"} <= names


@pytest.mark.parametrize(
    "damage",
    ["garbage-files", "root-symlink-is-dir", "metadata-dir-is-file", "forged-timestamp"],
)
def test_corrupted_cache_is_repaired_from_embedded_root(
    damage: str, pub: Pub, server: RepoServer, tmp_path: Path
) -> None:
    from tuf.api.metadata import Metadata

    from selfupdate.releases import _keys

    cache = tmp_path / "c"
    client_for(pub, server.url, cache).check("1.0.0")
    md = cache / "metadata"
    if damage == "garbage-files":
        for name in ("timestamp.json", "snapshot.json", "targets.json"):
            (md / name).write_bytes(b"\0garbage")
        (md / "root_history" / "2.root.json").write_bytes(b"{}")
    elif damage == "root-symlink-is-dir":
        (md / "root.json").unlink()
        (md / "root.json").mkdir()
        (md / "root.json" / "x").write_bytes(b"")
    elif damage == "metadata-dir-is-file":
        import shutil

        shutil.rmtree(md)
        md.write_bytes(b"not a directory")
    else:
        # A cached timestamp with a huge version, signed by a key root does not trust: if it
        # were trusted, every real timestamp would look like a rollback from now on.
        ts: Metadata[Any] = Metadata.from_file(str(md / "timestamp.json"))
        ts.signed.version = 10**6
        ts.sign(_keys.generate())
        (md / "timestamp.json").write_bytes(ts.to_bytes())
    assert client_for(pub, server.url, cache).check("1.0.0") == pub.published["2.0.0"]


def test_unwritable_cache_is_a_typed_error(pub: Pub, server: RepoServer, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(errors.CacheError) as ei:
        client_for(pub, server.url, blocker / "cache").check("1.0.0")
    assert_sentence(str(ei.value))


def test_proxy_from_environment_is_used(
    pub: Pub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY is honoured the usual requests way: a repository on a host name that does
    not resolve is reachable only through the proxy."""
    seen: list[str] = []
    root = pub.repo

    class Proxy(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.path)  # absolute URL: this is a proxy request
            path = urllib.parse.urlsplit(self.path).path
            file = root / path.lstrip("/")
            data = file.read_bytes() if file.is_file() else b""
            self.send_response(200 if file.is_file() else 404)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_port}")
        c = client_for(pub, "http://releases.invalid", tmp_path / "c")
        rel = c.check("1.0.0")
        assert rel is not None
        buf = io.BytesIO()
        c.download_to(rel, buf)
        assert buf.getvalue() == pub.target_file(rel).read_bytes()
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert seen and all(p.startswith("http://releases.invalid/") for p in seen)


def test_https_uses_the_ca_bundle_from_the_environment(
    pub: Pub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REQUESTS_CA_BUNDLE is honoured the usual requests way: a server whose certificate
    only that bundle vouches for is refused without it and accepted with it."""
    cert, key = self_signed_cert(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    for server in serve(pub.repo, tls=ctx):
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        with pytest.raises(errors.UnreachableError) as ei:
            client_for(pub, server.url, tmp_path / "c").check("1.0.0")
        assert "TLS certificate" in str(ei.value)
        assert_sentence(str(ei.value))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        c = client_for(pub, server.url, tmp_path / "c")
        rel = c.check("1.0.0")
        assert rel is not None and rel == pub.published["2.0.0"]
        buf = io.BytesIO()
        c.download_to(rel, buf)
        assert buf.getvalue() == pub.target_file(rel).read_bytes()


def test_progress_bar_on_a_terminal_by_default(pub: Pub, tmp_path: Path) -> None:
    """progress=None: a bar when stderr is a terminal (a pty here), none otherwise."""
    code = (
        "import io, sys\n"
        "from pathlib import Path\n"
        "from selfupdate.releases.client import UpdateClient\n"
        "repo, cache = sys.argv[1:3]\n"
        "root = (Path(repo) / 'metadata' / '1.root.json').read_bytes()\n"
        "c = UpdateClient('nsapp', repo, root, cache_dir=Path(cache))\n"
        "c.download_to(c.check('1.0.0'), io.BytesIO())\n"
    )
    for use_pty in (True, False):
        primary, secondary = pty.openpty() if use_pty else os.pipe()
        if use_pty:  # a new pty has 0 columns, where tqdm draws nothing: make it 80x24
            fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(pub.repo), str(tmp_path / "c")],
            cwd=REPO,
            stderr=secondary,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        os.close(secondary)
        err = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the pty's other side closed
                break
            if not chunk:
                break
            err += chunk
        os.close(primary)
        assert proc.wait(timeout=60) == 0, err
        assert (b"nsapp 2.0.0" in err) is use_pty, (use_pty, err)


def test_progress_bar_only_when_asked_or_on_a_terminal(
    pub: Pub, server: RepoServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    for progress, expect in ((None, False), (False, False), (True, True)):
        c = client_for(pub, server.url, tmp_path / "c", progress=progress)
        rel = c.check("1.0.0")
        assert rel is not None
        c.download_to(rel, io.BytesIO())
        err = capfd.readouterr().err
        assert ("nsapp 2.0.0" in err) is expect, (progress, err)


def test_bad_trusted_root_is_a_config_error(tmp_path: Path) -> None:
    for data in (b"", b"{}", b"not json", json.dumps({"signed": {"_type": "root"}}).encode()):
        with pytest.raises(errors.ConfigError) as ei:
            UpdateClient("nsapp", "http://127.0.0.1:9", data, cache_dir=tmp_path)
        assert_sentence(str(ei.value))


def test_trusted_root_must_be_self_signed(pub: Pub, tmp_path: Path) -> None:
    doc = json.loads(pub.root)
    doc["signed"]["version"] = 7  # signature no longer matches
    with pytest.raises(errors.ConfigError):
        UpdateClient("nsapp", "http://x", json.dumps(doc).encode(), cache_dir=tmp_path)


def test_unsupported_url_scheme_is_a_config_error(pub: Pub, tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError) as ei:
        UpdateClient("nsapp", "ftp://example.org/repo", pub.root, cache_dir=tmp_path)
    assert_sentence(str(ei.value))


def test_invalid_arguments_are_programming_errors(pub: Pub, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        UpdateClient("bad/name", "http://x", pub.root, cache_dir=tmp_path)
    with pytest.raises(ValueError):
        UpdateClient("nsapp", "http://x", pub.root, channel="", cache_dir=tmp_path)
    with pytest.raises(TypeError):
        UpdateClient("nsapp", "http://x", pub.root.decode(), cache_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FetchConfig(deadline=0)
    with pytest.raises(ValueError):
        client_for(pub, "http://127.0.0.1:9", tmp_path).check("not a version")


def test_default_cache_dir_is_the_apps_state_dir(
    pub: Pub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    c = UpdateClient("nsapp", str(pub.repo), pub.root, progress=False)
    assert c.cache_dir == tmp_path / "xdg" / "nsapp" / "tuf-metadata"
    assert c.check("1.0.0") == pub.published["2.0.0"]
    assert (c.cache_dir / "metadata" / "timestamp.json").is_file()


def test_install_helper_sanity(pub: Pub, tmp_path: Path) -> None:
    """The install steps the attack tests use really install a verified release."""
    inst = make_install(tmp_path)
    c = client_for(pub, pub.repo.as_uri(), tmp_path / "c")
    assert inst.update(c, "1.0.0") == pub.published["2.0.0"]
    assert inst.path.read_bytes() == pub.target_file(pub.published["2.0.0"]).read_bytes()
    assert os.listdir(inst.path.parent) == ["nsapp.pyz"]


# --- pure release choice (no I/O) -----------------------------------------------------------


def _rel(version: str, app: str = "a", channel: str = "stable") -> Release:
    return Release(app, channel, version, f"{app}/{channel}/{app}-{version}", 1, "0" * 64)


def test_newest_release_choice() -> None:
    rels = [_rel("1.0"), _rel("1.10"), _rel("1.9"), _rel("3.0", app="b"), _rel("4.0", "a", "beta")]
    assert newest_release(rels, "a", "stable", "1.0") == _rel("1.10")  # not string order
    assert newest_release(rels, "a", "stable", "1.10") is None
    assert newest_release(rels, "a", "stable", "2.0") is None  # never a downgrade
    assert newest_release(rels, "a", "beta", "1.0") == _rel("4.0", "a", "beta")
    assert newest_release(rels, "a", "stable", None) == _rel("1.10")


def test_release_from_target_validates_custom_fields() -> None:
    good = {"selfupdate": {"app": "a", "channel": "stable", "version": "1.0"}}
    h = {"sha256": "ab" * 32}
    assert release_from_target("p", 5, h, good) == Release("a", "stable", "1.0", "p", 5, "ab" * 32)
    assert release_from_target("p", 5, h, None) is None  # not a release: ignored
    assert release_from_target("p", 5, h, {"other": 1}) is None
    for bad in (
        {"selfupdate": {"app": "a", "channel": "stable", "version": "x.y"}},
        {"selfupdate": {"app": "a/b", "channel": "stable", "version": "1"}},
        {"selfupdate": {"app": "a", "version": "1"}},
        {"selfupdate": "a"},
    ):
        with pytest.raises(ValueError):
            release_from_target("p", 5, h, bad)
    with pytest.raises(ValueError):
        release_from_target("p", 5, {"sha512": "00"}, good)


def test_check_release_reasons() -> None:
    r = _rel("2.0")
    assert check_release(r, r, "a", "stable", "1.0") is None
    assert "not a release" in str(check_release(r, None, "a", "stable", None))
    assert "downgrade" in str(check_release(r, r, "a", "stable", "2.0"))
    assert "channel" in str(check_release(r, r, "a", "beta", None))
    other = Release("a", "stable", "2.0", r.target_path, 2, r.sha256)
    assert "not as asked" in str(check_release(r, other, "a", "stable", None))


# --- python-tuf's errors become ours by their type, never by their text ------------------------

_MISLEADING = (
    "must be >= 3; missing info for 'x'; Expected targets.json version; not part of snapshot"
)


@pytest.mark.parametrize(
    ("tuf_error", "role", "facts", "ours"),
    [
        ("ExpiredMetadataError", "snapshot", {}, errors.ExpiredMetadataError),
        ("UnsignedMetadataError", "targets", {}, errors.SignatureError),
        ("LengthOrHashMismatchError", "snapshot", {}, errors.InconsistentMetadataError),
        ("DeserializationError", "timestamp", {}, errors.MalformedMetadataError),
        ("BadVersionNumberError", "timestamp", {}, errors.RollbackError),
        ("BadVersionNumberError", "snapshot", {"lowered": True}, errors.RollbackError),
        ("BadVersionNumberError", "snapshot", {}, errors.InconsistentMetadataError),
        ("BadVersionNumberError", "root", {}, errors.InconsistentMetadataError),
        ("BadVersionNumberError", "targets", {}, errors.InconsistentMetadataError),
        ("RepositoryError", "snapshot", {"lowered": True}, errors.RollbackError),
        ("RepositoryError", "targets", {"listed": False}, errors.InconsistentMetadataError),
        ("RepositoryError", "targets", {}, errors.MalformedMetadataError),
        ("RepositoryError", "root", {}, errors.MalformedMetadataError),
    ],
)
def test_each_class_of_tuf_error_becomes_one_of_ours(
    tuf_error: str, role: str, facts: dict[str, bool], ours: type[errors.MetadataError]
) -> None:
    """The same misleading message for every class: only the type (and the role and metadata
    facts the client works out itself) decide."""
    from tuf.api import exceptions as tuf_exc
    from tuf.api.serialization import DeserializationError

    from selfupdate.releases.client import metadata_error

    cls = DeserializationError if tuf_error == "DeserializationError" else getattr(
        tuf_exc, tuf_error
    )
    e = metadata_error(cls(_MISLEADING), role, expires="2020-01-01", **facts)
    assert type(e) is ours
    assert e.role == role
    assert_sentence(str(e))


def test_every_tuf_repository_error_class_is_classified() -> None:
    """A tuf release that adds a RepositoryError subclass fails here until it is mapped (and
    the parametrized test above gains a line for it)."""
    from tuf.api import exceptions as tuf_exc
    from tuf.api.serialization import DeserializationError, SerializationError

    found = {
        c.__name__ for c in vars(tuf_exc).values()
        if isinstance(c, type) and issubclass(c, tuf_exc.RepositoryError)
    } | {c.__name__ for c in (DeserializationError, SerializationError)
         if issubclass(c, tuf_exc.RepositoryError)}
    assert found == {
        "RepositoryError", "UnsignedMetadataError", "BadVersionNumberError",
        "EqualVersionNumberError", "ExpiredMetadataError", "LengthOrHashMismatchError",
        "DeserializationError", "SerializationError",
    }  # EqualVersionNumberError: ngclient handles it (an unchanged timestamp); SerializationError:
    # raised only when writing metadata (the publisher), never while verifying


def test_a_snapshot_that_drops_or_lowers_a_listed_file_is_a_rollback() -> None:
    from selfupdate.releases._trust import lowers_listed_versions

    trusted = {"targets.json": 5}
    assert lowers_listed_versions(trusted, {"targets.json": 4})
    assert lowers_listed_versions(trusted, {})
    assert not lowers_listed_versions(trusted, {"targets.json": 5})
    assert not lowers_listed_versions(trusted, {"targets.json": 6, "other.json": 1})
    assert not lowers_listed_versions(trusted, None)


def test_tuf_trusted_set_has_the_shape_we_read(
    pub: Pub, server: RepoServer, tmp_path: Path
) -> None:
    """The client reads python-tuf's private ``Updater._trusted_set`` (see
    ``selfupdate.releases.client.trusted_set``). If a tuf release renames or reshapes it, this
    fails loudly instead of updates breaking in the field."""
    from collections.abc import Mapping
    from datetime import datetime

    from tuf.api.metadata import Root, Snapshot, Targets, Timestamp
    from tuf.ngclient import Updater

    from selfupdate.releases.client import trusted_set

    client = client_for(pub, server.url, tmp_path / "cache")
    client.check("1.0.0")
    assert isinstance(client._updater, Updater)
    assert hasattr(client._updater, "_trusted_set"), "tuf renamed Updater._trusted_set"
    ts = trusted_set(client._updater)
    assert isinstance(ts, Mapping)
    assert isinstance(ts.root, Root) and isinstance(ts.root.consistent_snapshot, bool)
    assert isinstance(ts.targets, Targets) and isinstance(ts.targets.targets, dict)
    assert "nsapp/stable/nsapp-2.0.0.pyz" in ts.targets.targets
    assert isinstance(ts.get("timestamp"), Timestamp)
    assert isinstance(ts.get("snapshot"), Snapshot)
    assert ts.get("no-such-role") is None
    assert isinstance(ts.reference_time, datetime)
    assert not ts.root.is_expired(ts.reference_time)
