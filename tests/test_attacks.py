"""One test per attack (TUF spec section 1.5.2 and issue 4) against a real repository made by
the publisher and served on 127.0.0.1. Each asserts the typed error, a one-sentence message,
and that the caller's install location was left alone (it would be replaced, and the test
fail, if the check were removed: every scenario has a newer release on offer)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from _support_client import (
    Install,
    Pub,
    RepoServer,
    assert_sentence,
    body,
    endless,
    forge,
    free_port,
    make_install,
    make_pub,
    no_proxy_env,  # noqa: F401 - fixture, used through pytestmark
    redirect,
    serve,
    status,
    trickle,
)

from selfupdate import errors
from selfupdate.releases._fetch import FetchConfig
from selfupdate.releases.client import Release, UpdateClient

pytestmark = pytest.mark.usefixtures("no_proxy_env")

FAST = FetchConfig(connect_timeout=5, read_timeout=5, deadline=20, min_speed=200, speed_window=1)
PAST = datetime(2020, 1, 1, tzinfo=UTC)

MakeClient = Callable[..., UpdateClient]


@pytest.fixture
def pub(tmp_path: Path) -> Pub:
    """A repository with nsapp 1.0.0 and 2.0.0 on stable (the client runs 1.0.0)."""
    p = make_pub(tmp_path)
    p.publish("1.0.0")
    p.publish("2.0.0", extra=b"v2" * 1000)
    return p


@pytest.fixture
def server(pub: Pub) -> Iterator[RepoServer]:
    yield from serve(pub.repo)


@pytest.fixture
def install(tmp_path: Path) -> Install:
    return make_install(tmp_path)


@pytest.fixture
def make_client(tmp_path: Path, pub: Pub, server: RepoServer) -> MakeClient:
    def make(**kw: Any) -> UpdateClient:
        kw.setdefault("cache_dir", tmp_path / "cache")
        kw.setdefault("config", FAST)
        kw.setdefault("progress", False)
        url = kw.pop("url", server.url)
        return UpdateClient(kw.pop("app", "nsapp"), url, pub.root, **kw)

    return make


def _version(release: Release | None) -> str | None:
    return None if release is None else release.version


def refused(
    install: Install,
    client: UpdateClient,
    exc: type[errors.SelfUpdateError],
    current: str = "1.0.0",
) -> Any:
    """Attempt the update; assert it fails with ``exc``, one sentence, nothing installed."""
    with pytest.raises(exc) as ei:
        install.update(client, current)
    assert isinstance(ei.value, errors.SelfUpdateError)
    assert_sentence(str(ei.value))
    install.assert_untouched()
    return ei.value


def test_sanity_update_works(install: Install, make_client: MakeClient, pub: Pub) -> None:
    """The control: without an attack the same steps do install 2.0.0."""
    rel = install.update(make_client(), "1.0.0")
    assert rel.version == "2.0.0"
    assert install.path.read_bytes() == pub.target_file(rel).read_bytes()


# --- arbitrary software ----------------------------------------------------------------------


def test_tampered_target_is_rejected(install: Install, make_client: MakeClient, pub: Pub) -> None:
    f = pub.target_file(pub.published["2.0.0"])
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF  # same length, different bytes
    f.write_bytes(bytes(data))
    e = refused(install, make_client(), errors.TargetMismatchError)
    assert "sha256" in str(e)


def test_target_signed_by_unknown_key_is_rejected(
    install: Install, make_client: MakeClient, pub: Pub
) -> None:
    """Online keys (snapshot, timestamp) compromised, targets key not: a release the
    attacker lists in targets signed with their own key is refused."""
    from tuf.api.metadata import TargetFile

    from selfupdate.releases import _keys

    evil = pub.builds / "evil.pyz"
    evil.write_bytes(b"evil")
    path = "nsapp/stable/nsapp-9.0.0.pyz"

    def add_evil(targets: Any) -> None:
        tf = TargetFile.from_file(path, str(evil))
        tf.unrecognized_fields["custom"] = {
            "selfupdate": {"app": "nsapp", "channel": "stable", "version": "9.0.0"}
        }
        targets.targets[path] = tf

    forge(pub, targets=add_evil, signers={"targets": _keys.generate()})
    e = refused(install, make_client(), errors.SignatureError)
    assert e.role == "targets"


def test_metadata_signed_below_threshold_is_rejected(
    install: Install, make_client: MakeClient, pub: Pub
) -> None:
    """Root demands two timestamp signatures; a timestamp with one is refused."""
    from tuf.api.metadata import Metadata

    from selfupdate.releases import _keys
    from selfupdate.releases.publish import _Repo

    repo = _Repo(pub.repo)
    root_md = repo.root()
    second = _keys.generate()
    root_md.signed.add_key(second.public_key, "timestamp")
    root_md.signed.roles["timestamp"].threshold = 2
    root_md.signed.version += 1
    root_md.signatures.clear()
    root_md.sign(_keys.load(pub.keys, "root"))
    repo.write(root_md)
    forge(pub)  # a new timestamp, signed by the one usual timestamp key only
    e = refused(install, make_client(), errors.SignatureError)
    assert e.role == "timestamp"

    # Control: with both signatures the very same repository is accepted.
    ts: Metadata[Any] = Metadata.from_file(str(pub.meta("timestamp.json")))
    ts.sign(second, append=True)
    pub.meta("timestamp.json").write_bytes(ts.to_bytes())
    assert make_client().check("1.0.0") is not None


# --- freeze (expired metadata) ------------------------------------------------------------


def test_expired_timestamp_is_rejected(install: Install, make_client: MakeClient, pub: Pub) -> None:
    from selfupdate.releases import publish

    publish.refresh(pub.keys, pub.repo, now=PAST)  # timestamp expires 2020-01-15
    e = refused(install, make_client(), errors.ExpiredMetadataError)
    assert e.role == "timestamp"
    assert "expired on 2020-01-15" in str(e)
    assert "selfupdate refresh" in str(e)


def test_expired_snapshot_is_rejected(install: Install, make_client: MakeClient, pub: Pub) -> None:
    forge(pub, snapshot=lambda s: setattr(s, "expires", PAST))
    e = refused(install, make_client(), errors.ExpiredMetadataError)
    assert e.role == "snapshot"
    assert "expired on 2020-01-01" in str(e)


def test_expired_targets_is_rejected(install: Install, make_client: MakeClient, pub: Pub) -> None:
    forge(pub, targets=lambda t: setattr(t, "expires", PAST))
    e = refused(install, make_client(), errors.ExpiredMetadataError)
    assert e.role == "targets"
    assert "expired on 2020-01-01" in str(e)


def test_expired_root_is_rejected(install: Install, make_client: MakeClient, pub: Pub) -> None:
    from selfupdate.releases import publish

    # A root rotation signed with a clock in the past: root v2 expired on 2020-12-31.
    publish.rotate(pub.keys, pub.repo, "timestamp", now=PAST)
    e = refused(install, make_client(), errors.ExpiredMetadataError)
    assert e.role == "root"
    assert "expired on 2020-12-31" in str(e)
    assert "rotate --role root" in str(e)


# --- rollback, downgrade, wrong software, mix-and-match ----------------------------------------


def test_metadata_rollback_is_rejected(
    install: Install, make_client: MakeClient, pub: Pub, tmp_path: Path
) -> None:
    old = tmp_path / "old-timestamp.json"
    shutil.copy(pub.meta("timestamp.json"), old)
    pub.publish("3.0.0")
    client = make_client()
    assert _version(client.check("1.0.0")) == "3.0.0"  # the client now trusts the new one
    # A mirror serves the older (validly signed, unexpired) timestamp again.
    shutil.copy(old, pub.meta("timestamp.json"))
    e = refused(install, make_client(), errors.RollbackError)
    assert e.role == "timestamp"


def test_snapshot_rollback_of_targets_version_is_rejected(
    install: Install, make_client: MakeClient, pub: Pub
) -> None:
    """A new snapshot (signed with the compromised snapshot key) that lists an older
    targets version than the client already trusted."""
    client = make_client()
    assert client.check("1.0.0") is not None
    tv = pub.current("targets").name.split(".")[0]

    def roll_back(snap: Any) -> None:
        snap.meta["targets.json"].version = int(tv) - 1
        snap.meta["targets.json"].hashes = None
        snap.meta["targets.json"].length = None

    forge(pub, snapshot=roll_back)
    refused(install, make_client(), errors.RollbackError)


def test_downgrade_to_older_release_is_refused(
    install: Install, make_client: MakeClient, pub: Pub
) -> None:
    client = make_client()
    # Running 2.0.0: the repository's only other release is older: no update offered ...
    assert client.check("2.0.0") is None
    # ... and handing the client the older release anyway is refused.
    with open(install.staging, "wb") as f, pytest.raises(errors.WrongReleaseError) as ei:
        client.download_to(pub.published["1.0.0"], f)
    assert "downgrade" in str(ei.value)
    assert_sentence(str(ei.value))
    install.assert_untouched()


def test_release_of_another_app_or_channel_is_ignored_and_refused(
    install: Install, make_client: MakeClient, pub: Pub, server: RepoServer
) -> None:
    other_app = pub.publish("9.0.0", app="otherapp")
    beta = pub.publish("8.0.0", channel="beta", extra=b"v2" * 1000)  # same length as 2.0.0
    client = make_client()
    assert client.check("2.0.0") is None  # neither is offered to nsapp on stable
    for rel in (other_app, beta):
        with open(install.staging, "wb") as f, pytest.raises(errors.WrongReleaseError) as ei:
            client.download_to(rel, f)
        assert_sentence(str(ei.value))
        install.assert_untouched()
    # A mirror serving the beta build at the stable release's URL is caught by the hash.
    server.overrides[pub.url_path(pub.published["2.0.0"])] = body(
        pub.target_file(beta).read_bytes()
    )
    refused(install, make_client(), errors.TargetMismatchError)


def test_mix_and_match_is_rejected(
    install: Install, make_client: MakeClient, pub: Pub, tmp_path: Path
) -> None:
    """Old timestamp and snapshot served with new targets metadata (a fresh client, so no
    rollback protection helps: the signed hashes and versions must)."""
    keep = tmp_path / "old-metadata"
    shutil.copytree(pub.repo / "metadata", keep)
    old_targets = pub.current("targets").name
    pub.publish("3.0.0")
    new_targets = pub.current("targets")
    new_bytes = new_targets.read_bytes()
    shutil.rmtree(pub.repo / "metadata")
    shutil.copytree(keep, pub.repo / "metadata")
    pub.meta(old_targets).write_bytes(new_bytes)
    e = refused(install, make_client(), errors.InconsistentMetadataError)
    assert e.role == "targets"


def test_mix_and_match_snapshot_is_rejected(
    install: Install, make_client: MakeClient, pub: Pub
) -> None:
    """New timestamp served with an old snapshot in the new snapshot's place."""
    old_snapshot = pub.current("snapshot").read_bytes()
    pub.publish("3.0.0")
    pub.current("snapshot").write_bytes(old_snapshot)
    e = refused(install, make_client(), errors.InconsistentMetadataError)
    assert e.role == "snapshot"


# --- endless data, slow retrieval ------------------------------------------------------------


def test_endless_target_is_cut_at_signed_length(
    install: Install, make_client: MakeClient, pub: Pub, server: RepoServer
) -> None:
    rel = pub.published["2.0.0"]
    path = pub.url_path(rel)
    server.overrides[path] = endless(server, path)
    e = refused(install, make_client(), errors.LengthExceededError)
    assert e.limit == rel.length
    assert server.sent[path] < 64 << 20  # it stopped reading; the server did not send 1 GiB


def test_endless_metadata_is_cut(
    install: Install, make_client: MakeClient, server: RepoServer
) -> None:
    server.overrides["/metadata/timestamp.json"] = endless(server, "/metadata/timestamp.json")
    e = refused(install, make_client(), errors.LengthExceededError)
    assert e.limit == 16384  # ngclient's timestamp_max_length
    assert server.sent["/metadata/timestamp.json"] < 64 << 20


def test_slow_retrieval_is_cut_off(
    install: Install, make_client: MakeClient, pub: Pub, server: RepoServer
) -> None:
    rel = pub.published["2.0.0"]
    path = pub.url_path(rel)
    # One byte per second; the client wants >= 200 bytes/s over any 1 s window.
    server.overrides[path] = trickle(server, path, rel.length, 1.0)
    e = refused(install, make_client(), errors.SlowRetrievalError)
    assert "slower than 200 bytes/s" in str(e)
    assert e.received < 10  # cut off after a handful of bytes, not after rel.length


def test_slow_retrieval_total_deadline(
    install: Install, make_client: MakeClient, pub: Pub, server: RepoServer
) -> None:
    rel = pub.published["2.0.0"]
    path = pub.url_path(rel)
    server.overrides[path] = trickle(server, path, rel.length, 0.2)
    cfg = FetchConfig(read_timeout=5, deadline=1, min_speed=0)
    e = refused(install, make_client(config=cfg), errors.SlowRetrievalError)
    assert "deadline" in str(e)
    assert e.received < rel.length


def test_slow_retrieval_of_headers_is_cut_off(
    install: Install, make_client: MakeClient, server: RepoServer
) -> None:
    """A server that trickles its status line and headers (one byte every 0.25 s, for 15 s
    at most) never trips a per-read timeout; the deadline still cuts it off."""

    head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 40
    sent = 0

    def slow_headers(h: Any) -> None:
        nonlocal sent
        for byte in head:
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            sent += 1
            time.sleep(0.25)

    server.overrides["/metadata/timestamp.json"] = slow_headers
    cfg = FetchConfig(read_timeout=5, deadline=1, min_speed=0)
    e = refused(install, make_client(config=cfg), errors.SlowRetrievalError)
    assert "deadline" in str(e)
    assert sent < len(head) // 2  # the client hung up early instead of waiting it out


# --- transport failures --------------------------------------------------------------------


@pytest.mark.parametrize("code", [404, 500])
def test_http_error_on_target(
    code: int, install: Install, make_client: MakeClient, pub: Pub, server: RepoServer
) -> None:
    server.overrides[pub.url_path(pub.published["2.0.0"])] = status(code)
    e = refused(install, make_client(), errors.HTTPStatusError)
    assert e.status_code == code


def test_http_500_on_metadata(
    install: Install, make_client: MakeClient, server: RepoServer
) -> None:
    server.overrides["/metadata/timestamp.json"] = status(500)
    e = refused(install, make_client(), errors.HTTPStatusError)
    assert e.status_code == 500
    assert "try again later" in str(e)


def test_connection_refused(install: Install, make_client: MakeClient) -> None:
    client = make_client(url=f"http://127.0.0.1:{free_port()}")
    e = refused(install, client, errors.UnreachableError)
    assert "Connection refused" in str(e)


def test_malformed_json_metadata(
    install: Install, make_client: MakeClient, server: RepoServer
) -> None:
    server.overrides["/metadata/timestamp.json"] = body(b'{"signed": {"_type": "timest')
    e = refused(install, make_client(), errors.MalformedMetadataError)
    assert e.role == "timestamp"


def test_truncated_download(
    install: Install, make_client: MakeClient, pub: Pub, server: RepoServer
) -> None:
    rel = pub.published["2.0.0"]
    data = pub.target_file(rel).read_bytes()
    server.overrides[pub.url_path(rel)] = body(data[: len(data) // 2], length=len(data))
    e = refused(install, make_client(), errors.TruncatedError)
    assert e.received == len(data) // 2


def test_truncated_short_target_without_length(
    install: Install, make_client: MakeClient, pub: Pub, server: RepoServer
) -> None:
    """A server that closes early and never announced a length: the signed length catches it."""
    rel = pub.published["2.0.0"]
    data = pub.target_file(rel).read_bytes()

    def short(h: Any) -> None:
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(data[:100])

    server.overrides[pub.url_path(rel)] = short
    e = refused(install, make_client(), errors.TruncatedError)
    assert e.expected == rel.length


def test_redirect_to_another_host_is_refused(
    install: Install, make_client: MakeClient, pub: Pub, server: RepoServer
) -> None:
    path = pub.url_path(pub.published["2.0.0"])
    elsewhere = f"http://localhost:{server.httpd.server_port}{path}"  # another host name
    server.overrides[path] = redirect(elsewhere)
    e = refused(install, make_client(), errors.RedirectError)
    assert e.location == elsewhere


def test_redirect_on_same_host_is_followed(
    install: Install, make_client: MakeClient, pub: Pub, server: RepoServer
) -> None:
    rel = pub.published["2.0.0"]
    server.overrides["/moved.pyz"] = body(pub.target_file(rel).read_bytes())
    server.overrides[pub.url_path(rel)] = redirect("/moved.pyz")
    assert install.update(make_client(), "1.0.0") == rel


# --- key rotation --------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp"])
def test_key_rotation_is_followed(
    role: str, install: Install, make_client: MakeClient, pub: Pub, tmp_path: Path
) -> None:
    from selfupdate.releases import publish

    client = make_client()
    assert _version(client.check("1.0.0")) == "2.0.0"  # cache now trusts root v1 and its keys
    publish.rotate(pub.keys, pub.repo, role)
    publish.rotate(pub.keys, pub.repo, role)  # twice: the client walks v1 -> v2 -> v3
    pub.publish("3.0.0")
    # The same cache, and a fresh one, both follow the chain from the embedded root v1.
    for cache in (tmp_path / "cache", tmp_path / "fresh-cache"):
        assert _version(make_client(cache_dir=cache).check("1.0.0")) == "3.0.0"
    assert install.update(make_client(), "1.0.0").version == "3.0.0"


def test_retired_key_is_no_longer_trusted(
    install: Install, make_client: MakeClient, pub: Pub
) -> None:
    from selfupdate.releases import _keys, publish

    old_timestamp_key = _keys.load(pub.keys, "timestamp")
    publish.rotate(pub.keys, pub.repo, "timestamp")
    forge(pub, signers={"timestamp": old_timestamp_key})
    e = refused(install, make_client(), errors.SignatureError)
    assert e.role == "timestamp"


def test_root_signed_only_by_new_key_is_rejected(
    install: Install, make_client: MakeClient, pub: Pub
) -> None:
    """A root rotation the old root key did not sign (an attacker's 'rotation') is refused."""
    from selfupdate.releases import _keys
    from selfupdate.releases.publish import _Repo

    repo = _Repo(pub.repo)
    root_md = repo.root()
    evil = _keys.generate()
    old = _keys.load(pub.keys, "root").public_key.keyid
    root_md.signed.revoke_key(old, "root")
    root_md.signed.add_key(evil.public_key, "root")
    root_md.signed.version += 1
    root_md.signatures.clear()
    root_md.sign(evil)
    repo.write(root_md)
    e = refused(install, make_client(), errors.SignatureError)
    assert e.role == "root"


# --- local repository (offline) -------------------------------------------------------------


@pytest.mark.parametrize("form", ["file-url", "directory"])
def test_offline_local_repository_same_verification(
    form: str, install: Install, pub: Pub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing may use the network: any proxy or socket use would fail loudly.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    url = pub.repo.as_uri() if form == "file-url" else str(pub.repo)

    def client() -> UpdateClient:
        return UpdateClient("nsapp", url, pub.root, cache_dir=tmp_path / "c", progress=False)

    f = pub.target_file(pub.published["2.0.0"])
    good = f.read_bytes()
    f.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    refused(install, client(), errors.TargetMismatchError)
    f.write_bytes(good)
    assert install.update(client(), "1.0.0").version == "2.0.0"
    assert install.path.read_bytes() == good


_FETCH_IN_CHILD = """
import sys
from selfupdate import errors
from selfupdate.releases.client import UpdateClient
url, root, cache, out = sys.argv[1:]
c = UpdateClient("nsapp", url, open(root, "rb").read(), cache_dir=cache, progress=False)
try:
    c.download_to(c.check("1.0.0"), open(out, "wb"))
except errors.SelfUpdateError as e:
    print("FetchError" if isinstance(e, errors.FetchError) else type(e).__name__, e)
"""


@pytest.mark.parametrize("where", ["target", "timestamp"])
def test_a_fifo_in_a_local_repository_is_refused_not_waited_for(
    where: str, pub: Pub, tmp_path: Path
) -> None:
    """In a child with a time limit: a FIFO opened for reading blocks until a writer comes."""
    import os
    import subprocess
    import sys

    f = pub.target_file(pub.published["2.0.0"]) if where == "target" else pub.meta(
        "timestamp.json")
    f.unlink()
    os.mkfifo(f)
    (tmp_path / "root.json").write_bytes(pub.root)
    r = subprocess.run(
        [sys.executable, "-c", _FETCH_IN_CHILD, pub.repo.as_uri(), str(tmp_path / "root.json"),
         str(tmp_path / "c"), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0 and r.stdout.startswith("FetchError "), (r.stdout, r.stderr)
    assert_sentence(r.stdout.split(" ", 1)[1].strip())
    assert "not a regular file" in r.stdout


def test_a_nul_in_a_signed_target_path_is_a_sentence(
    install: Install, pub: Pub, tmp_path: Path
) -> None:
    """A targets key holder lists a name no file can have; file:// cannot open it."""
    import copy

    def add(targets: Any) -> None:
        good = targets.targets[pub.published["2.0.0"].target_path]
        evil = copy.deepcopy(good)
        evil.path = "nsapp/stable/nsapp-3.0.0\0.pyz"
        evil.unrecognized_fields["custom"]["selfupdate"]["version"] = "3.0.0"  # type: ignore
        targets.targets[evil.path] = evil

    forge(pub, targets=add)
    client = UpdateClient("nsapp", pub.repo.as_uri(), pub.root, cache_dir=tmp_path / "c",
                          progress=False)
    e = refused(install, client, errors.FetchError)
    assert "NUL" in str(e)
