"""Delta updates (issue 14): the format on real ``.pyz`` builds and against hostile deltas.

Real builds of the example app (``build_pyz``, session-cached), builds derived from them the
way a reproducible rebuild changes them (``tests/_support_delta.py``).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from selfupdate.releases._delta import (
    DeltaError,
    DeltaHeader,
    apply_delta,
    file_digest,
    make_delta,
    read_header,
)
from selfupdate.releases._delta_client import human_size
from tests._support_delta import (
    app_code_change,
    bump_of,
    dependency_bump,
    dependency_share,
    header_bytes,
    op_copy,
    op_data,
    op_zdata,
    rewritten,
    versioned,
)

PY = sys.executable


# ---------------------------------------------------------------------------------------------
# A static server on 127.0.0.1 that counts what it sends, and can be slow for deltas


@dataclass
class Served:
    sent: list[tuple[str, int]] = field(default_factory=list)  # (path, body bytes)
    slow: float = 0.0  # seconds per 4 KiB piece of a .delta (0: full speed)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bytes_of(self, suffix: str) -> list[int]:
        with self.lock:
            return [n for p, n in self.sent if p.endswith(suffix)]


class _Handler(http.server.SimpleHTTPRequestHandler):
    served: Served

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def copyfile(self, source: Any, outputfile: Any) -> None:
        n, slow = 0, self.served.slow if self.path.endswith(".delta") else 0.0
        try:
            while chunk := source.read(4096 if slow else 1 << 20):
                outputfile.write(chunk)
                n += len(chunk)
                if slow:
                    outputfile.flush()
                    time.sleep(slow)
        finally:
            with self.served.lock:
                self.served.sent.append((self.path, n))


@dataclass
class World:
    url: str
    www: Path
    served: Served
    keys: Path
    base: Path
    v1: Path
    v2: Path
    builds: dict[str, Path]

    def repo(self, name: str) -> Path:
        """A fresh copy of the initial repository (same keys and root), served at URL/name."""
        shutil.copytree(self.base, self.www / name)
        return self.www / name


@pytest.fixture(scope="module", name="world")
def world_fixture(
    build_pyz: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    from selfupdate.releases import publish

    www = tmp_path_factory.mktemp("www")
    served = Served()
    handler = type("Handler", (_Handler,), {"served": served})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(www)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    tmp = tmp_path_factory.mktemp("delta-world")
    keys, base = tmp / "keys", tmp / "base"
    root = publish.init(keys, base, "nsapp")
    kw = {"trusted_root": root, "repo_url": f"{url}/base"}
    v1, v2 = build_pyz("1.0.0", **kw), build_pyz("2.0.0", **kw)
    builds = {
        "app": rewritten(v2, tmp / "app.pyz", versioned(app_code_change, "2.0.1")),
        "dep": rewritten(v2, tmp / "dep.pyz", versioned(dependency_bump, "2.0.1")),
        "big": rewritten(v2, tmp / "big.pyz", versioned(bump_of("cryptography"), "2.0.1")),
        "edited": rewritten(v2, tmp / "edited.pyz", app_code_change),  # 2.0.0, changed by hand
    }
    try:
        yield World(url, www, served, keys, base, v1, v2, builds)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(name="builds")
def builds_fixture(world: World) -> dict[str, Path]:
    return {"v1": world.v1, "v2": world.v2, **world.builds}


def _delta(base: Path, target: Path) -> tuple[bytes, DeltaHeader]:
    out = io.BytesIO()
    stats = make_delta(base, target, out)
    assert stats.length == len(out.getvalue())
    return out.getvalue(), stats.header


def _apply(delta: bytes, base: Path, expect: DeltaHeader) -> bytes:
    out = io.BytesIO()
    with open(base, "rb") as b:
        apply_delta(io.BytesIO(delta), b, out, expect)
    return out.getvalue()


@pytest.mark.parametrize(
    ("base", "target", "limit"),
    [
        ("v1", "v2", 0.01),  # a new version: the build's configuration and dist-info changed
        ("v2", "app", 0.01),  # one module of the app's own code
        ("v2", "v2", 0.001),  # the same build republished
    ],
)
def test_round_trip_rebuilds_the_target_exactly_and_is_small(
    builds: dict[str, Path], base: str, target: str, limit: float
) -> None:
    delta, header = _delta(builds[base], builds[target])
    assert _apply(delta, builds[base], header) == builds[target].read_bytes()
    assert len(delta) <= limit * builds[target].stat().st_size


def test_dependency_bump_costs_about_its_share(builds: dict[str, Path]) -> None:
    delta, header = _delta(builds["v2"], builds["dep"])
    assert _apply(delta, builds["v2"], header) == builds["dep"].read_bytes()
    full = builds["dep"].stat().st_size
    assert len(delta) <= dependency_share(builds["dep"]) + 0.05 * full


def test_files_that_are_not_zips_round_trip_as_literal(tmp_path: Path) -> None:
    base, target = tmp_path / "a", tmp_path / "b"
    base.write_bytes(b"not a zip " * 1000)
    target.write_bytes(bytes(range(256)) * 9000)  # > one literal piece
    delta, header = _delta(base, target)
    assert _apply(delta, base, header) == target.read_bytes()
    assert header == DeltaHeader(*file_digest(base), *file_digest(target))


# ---------------------------------------------------------------------------------------------
# Hostile deltas (signed by a compromised publisher, or corrupted): an error, never a wrong file


def _hostile_cases(base: bytes, target: bytes) -> dict[str, tuple[bytes, bytes]]:
    """name -> (the header's target, the operations after the header)."""
    n = max(len(base), 10)
    return {
        "copy beyond the base": (target, op_copy(n - 10, 11) + b"E"),
        "copy with a huge offset": (target, op_copy(2**64 - 5, 10) + b"E"),
        "data beyond the target length": (target, op_data(target + b"x") + b"E"),
        "copy beyond the target length": (base[:5], op_copy(0, 6) + b"E"),
        "compressed data longer than said": (target, op_zdata(target + b"y" * 10**6,
                                                               said=len(target)) + b"E"),
        "compressed data shorter than said": (target + b"z", op_zdata(target, said=len(target)
                                                                      + 1) + b"E"),
        "output shorter than the target": (target + b"more", op_data(target) + b"E"),
        "right length, wrong bytes": (target, op_data(bytes(len(target))) + b"E"),
        "unknown operation": (target, b"X" + op_data(target) + b"E"),
        "data after the end": (target, op_data(target) + b"E" + b"extra"),
        "no end": (target, op_data(target)),
    }


@pytest.mark.parametrize("case", list(_hostile_cases(b"", b"x")))
def test_hostile_delta_is_an_error_never_a_wrong_file(tmp_path: Path, case: str) -> None:
    base_bytes = b"B" * 5000
    target_bytes = b"T" * 3000
    target_for, ops = _hostile_cases(base_bytes, target_bytes)[case]
    base = tmp_path / "base"
    base.write_bytes(base_bytes)
    header = DeltaHeader(len(base_bytes), hashlib.sha256(base_bytes).hexdigest(),
                         len(target_for), hashlib.sha256(target_for).hexdigest())
    out = io.BytesIO()
    with pytest.raises(DeltaError) as e, open(base, "rb") as b:
        apply_delta(io.BytesIO(header_bytes(header) + ops), b, out, header)
    assert str(e.value).startswith("the ")
    assert len(out.getvalue()) <= header.target_length  # never written past the cap


def test_truncated_delta_is_an_error_at_every_cut(builds: dict[str, Path]) -> None:
    delta, header = _delta(builds["v1"], builds["v2"])
    for cut in sorted({1, 8, 80, 81, 97, len(delta) // 3, len(delta) // 2, len(delta) - 1}):
        with pytest.raises(DeltaError):
            _apply(delta[:cut], builds["v1"], header)


def test_delta_for_another_base_or_target_is_refused(builds: dict[str, Path]) -> None:
    delta, header = _delta(builds["v1"], builds["v2"])
    other_base = DeltaHeader(*file_digest(builds["v2"]), header.target_length,
                             header.target_sha256)
    other_target = DeltaHeader(header.base_length, header.base_sha256,
                               *file_digest(builds["app"]))
    for expect in (other_base, other_target):
        with pytest.raises(DeltaError, match="another base or target"):
            _apply(delta, builds["v1"], expect)
    with pytest.raises(DeltaError, match="not a delta"):
        read_header(io.BytesIO(b"PK\x03\x04" + bytes(100)))


def test_a_base_that_differs_from_the_one_the_delta_was_made_from_is_caught(
    builds: dict[str, Path], tmp_path: Path
) -> None:
    """Same length, one byte changed (a disk error, a hand edit after the hash was taken): the
    output's hash is checked, so the rebuild fails rather than giving a wrong file."""
    delta, header = _delta(builds["v1"], builds["v2"])
    data = bytearray(builds["v1"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    changed = tmp_path / "changed.pyz"
    changed.write_bytes(bytes(data))
    with pytest.raises(DeltaError, match="sha256 differs"):
        _apply(delta, changed, header)


# ---------------------------------------------------------------------------------------------
# The publisher: deltas as signed targets, linked to what they rebuild; prune


def _signed_targets(repo: Path) -> dict[str, Any]:
    ts = json.loads((repo / "metadata" / "timestamp.json").read_bytes())
    snap_v = ts["signed"]["meta"]["snapshot.json"]["version"]
    snap = json.loads((repo / "metadata" / f"{snap_v}.snapshot.json").read_bytes())
    tv = snap["signed"]["meta"]["targets.json"]["version"]
    targets = json.loads((repo / "metadata" / f"{tv}.targets.json").read_bytes())
    return targets["signed"]["targets"]  # type: ignore[no-any-return]


def test_publish_links_deltas_to_their_base_and_target_and_prune_removes_stale_ones(
    world: World, tmp_path: Path
) -> None:
    from selfupdate.releases import publish

    repo = world.repo("publisher")
    for build in (world.v1, world.v2):
        publish.publish_build(world.keys, repo, build)
    publish.publish_build(world.keys, repo, world.builds["app"], deltas=1)
    targets = _signed_targets(repo)
    deltas = {p: t for p, t in targets.items() if "selfupdate_delta" in t["custom"]}
    assert sorted(deltas) == ["nsapp/stable/nsapp-1.0.0-to-2.0.0.delta",
                              "nsapp/stable/nsapp-2.0.0-to-2.0.1.delta"]  # --deltas 1: one
    fields = deltas["nsapp/stable/nsapp-2.0.0-to-2.0.1.delta"]["custom"]["selfupdate_delta"]
    full = targets["nsapp/stable/nsapp-2.0.1.pyz"]
    assert fields["target"] == "nsapp/stable/nsapp-2.0.1.pyz"
    assert fields["target_sha256"] == full["hashes"]["sha256"]
    assert fields["base"] == dict(zip(("length", "sha256"), file_digest(world.v2), strict=True))
    for path, t in deltas.items():  # each is a target like any other: length and hash signed
        d, _, name = path.rpartition("/")
        f = repo / "targets" / d / f"{t['hashes']['sha256']}.{name}"
        assert file_digest(f) == (t["length"], t["hashes"]["sha256"])
    # A client gets no release out of a delta (it is not a release entry).
    assert [r.version for r in publish.status(repo).releases[("nsapp", "stable")]] == [
        "1.0.0", "2.0.0", "2.0.1"]
    # prune --keep 2 removes 1.0.0 and so the delta from it; the other stays.
    removed = publish.prune(world.keys, repo, 2)
    assert removed == ["nsapp/stable/nsapp-1.0.0.pyz", "nsapp/stable/nsapp-1.0.0-to-2.0.0.delta"]
    assert not list((repo / "targets" / "nsapp" / "stable").glob("*.nsapp-1.0.0-to-2.0.0.delta"))
    # Withdrawing 2.0.1 leaves its delta until prune: no client is offered 2.0.1 meanwhile.
    publish.yank(world.keys, repo, "nsapp", "2.0.1")
    assert publish.prune(world.keys, repo, 2) == ["nsapp/stable/nsapp-2.0.0-to-2.0.1.delta"]


def test_deltas_0_publishes_none(world: World) -> None:
    from selfupdate.releases import publish

    repo = world.repo("no-deltas")
    publish.publish_build(world.keys, repo, world.v1)
    result = publish.publish_build(world.keys, repo, world.v2, deltas=0)
    assert result.deltas == [] and not any(
        "selfupdate_delta" in t["custom"] for t in _signed_targets(repo).values())


# ---------------------------------------------------------------------------------------------
# End to end: `nsapp update` in a real process against the server above


@dataclass
class Install:
    pyz: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, str(self.pyz), *args], env=self.env, capture_output=True,
                              text=True, timeout=120)


def _install(build: Path, tmp_path: Path) -> Install:
    d = tmp_path / "opt"
    d.mkdir()
    pyz = d / "nsapp.pyz"
    shutil.copy(build, pyz)
    pyz.chmod(0o755)
    env = dict(os.environ, NSAPP_STATE_DIR=str(tmp_path / "state"),
               SELFUPDATE_TRIAL_TIMEOUT="30")
    env.pop("SELFUPDATE_TEST_STOP_AT", None)
    return Install(pyz, env)


def _released(world: World, name: str, *builds: Path) -> tuple[str, Path]:
    """A repository with ``builds`` published in order (deltas from the ones before each)."""
    from selfupdate.releases import publish

    repo = world.repo(name)
    for build in builds:
        publish.publish_build(world.keys, repo, build)
    return f"{world.url}/{name}", repo


def _delta_file(repo: Path, name: str) -> Path:
    (found,) = (repo / "targets" / "nsapp" / "stable").glob(f"*.{name}")
    return found


def _update(world: World, inst: Install, url: str) -> tuple[subprocess.CompletedProcess[str],
                                                              list[int], list[int]]:
    """Run `nsapp update`; return it and the bytes served for .delta and .pyz requests."""
    with world.served.lock:
        world.served.sent.clear()
    r = inst.run("update", "--repo", url)
    return r, world.served.bytes_of(".delta"), world.served.bytes_of(".pyz")


def _fell_back(r: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (r.stdout + r.stderr).splitlines()
            if "could not be used" in line and "downloading the whole build" in line]


@pytest.mark.parametrize("change", ["app", "dep"])
def test_update_downloads_only_the_delta(world: World, tmp_path: Path, change: str) -> None:
    new = world.builds[change]
    url, repo = _released(world, f"only-{change}", world.v1, world.v2, new)
    inst = _install(world.v2, tmp_path)
    check = inst.run("update", "--check", "--repo", url)
    said = f"(a delta; the whole build is {human_size(new.stat().st_size)})"
    assert check.returncode == 100 and said in check.stdout, check.stdout
    r, deltas, fulls = _update(world, inst, url)
    assert r.returncode == 0, r.stderr
    assert file_digest(inst.pyz) == file_digest(new)  # exactly the new build, verified
    assert fulls == [] and len(deltas) == 1, (deltas, fulls)
    limit = 0.01 * new.stat().st_size
    if change == "dep":
        limit = dependency_share(new) + 0.05 * new.stat().st_size
    assert deltas[0] <= limit
    assert "a delta; the whole build is" in r.stdout + r.stderr


def test_a_new_build_of_the_same_app_downloads_only_the_delta(
    world: World, tmp_path: Path
) -> None:
    url, _ = _released(world, "rebuilt", world.v1, world.v2)
    inst = _install(world.v1, tmp_path)
    r, deltas, fulls = _update(world, inst, url)
    assert r.returncode == 0, r.stderr
    assert file_digest(inst.pyz) == file_digest(world.v2)
    assert fulls == [] and len(deltas) == 1 and deltas[0] < 0.01 * world.v2.stat().st_size


def _corrupt(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def _truncate(f: Path) -> None:
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)


def _oversize(f: Path) -> None:
    with open(f, "ab") as fh:
        fh.write(b"\0" * 4096)


@pytest.mark.parametrize(("damage", "said"), [
    (_corrupt, "does not match its signed metadata"),  # tampered: its sha256 differs
    (_truncate, "ended after"),
    (_oversize, "more than the"),  # endless data: cut at the signed length
    ("other", "sent more than the"),  # another release's delta (a longer one) in its place
])
def test_a_bad_delta_on_the_server_falls_back_to_one_full_download(
    world: World, tmp_path: Path, damage: Callable[[Path], None] | str, said: str
) -> None:
    url, repo = _released(world, f"bad-{getattr(damage, '__name__', damage)}", world.v1,
                          world.v2, world.builds["app"])
    f = _delta_file(repo, "nsapp-2.0.0-to-2.0.1.delta")
    if damage == "other":
        f.write_bytes(_delta_file(repo, "nsapp-1.0.0-to-2.0.0.delta").read_bytes())
    else:
        assert callable(damage)
        damage(f)
    inst = _install(world.v2, tmp_path)
    r, deltas, fulls = _update(world, inst, url)
    assert r.returncode == 0, r.stderr
    assert file_digest(inst.pyz) == file_digest(world.builds["app"])
    fell = _fell_back(r)
    assert len(fell) == 1 and said in fell[0], r.stdout + r.stderr
    assert len(deltas) == 1 and fulls == [world.builds["app"].stat().st_size]  # one full


def test_an_installed_file_changed_by_hand_gets_the_whole_build(
    world: World, tmp_path: Path
) -> None:
    url, _ = _released(world, "edited", world.v1, world.v2, world.builds["app"])
    inst = _install(world.builds["edited"], tmp_path)  # 2.0.0, but not the published bytes
    r, deltas, fulls = _update(world, inst, url)
    assert r.returncode == 0, r.stderr
    assert file_digest(inst.pyz) == file_digest(world.builds["app"])
    assert deltas == [] and len(fulls) == 1
    assert "(the whole build: no delta from the installed build is published)" in (
        r.stdout + r.stderr)


def test_a_full_disk_during_the_rebuild_falls_back_and_installs(
    world: World, tmp_path: Path
) -> None:
    """The install directory is a tmpfs with room for the installed build, one new build and
    2 MB: the delta (4.7 MB: a big dependency bumped) plus the rebuilt file do not fit, the
    rebuild fails with ENOSPC half-way, the delta is removed and the whole build fits."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create user+mount namespaces here: {probe.stderr.strip()}")
    new = world.builds["big"]
    url, repo = _released(world, "full-disk", world.v1, world.v2, new)
    delta = _delta_file(repo, "nsapp-2.0.0-to-2.0.1.delta").stat().st_size
    room = 2 * 2**20
    assert delta > room + 2**20  # the delta and the rebuilt file cannot both fit
    size = world.v2.stat().st_size + new.stat().st_size + room
    small = tmp_path / "small"
    small.mkdir()
    env = dict(os.environ, NSAPP_STATE_DIR=str(tmp_path / "state"), SELFUPDATE_TRIAL_TIMEOUT="30")
    with world.served.lock:
        world.served.sent.clear()
    r = subprocess.run(["unshare", "-Urm", "sh", "-euc", (
        f'mount -t tmpfs -o size={size},mode=0755 tmpfs "{small}"\n'
        f'cp "{world.v2}" "{small}/nsapp.pyz"\n'
        f'"{PY}" "{small}/nsapp.pyz" update --repo {url} || echo "status $?"\n'
        f'sha256sum "{small}/nsapp.pyz"; ls -A "{small}"')],
        env=env, capture_output=True, text=True, timeout=180)
    assert "status" not in r.stdout, (r.stdout, r.stderr)
    fell = _fell_back(r)
    assert len(fell) == 1 and "No space left on device" in fell[0], r.stdout + r.stderr
    assert file_digest(new)[1] in r.stdout  # exactly the new build
    assert ".nsapp.pyz.update" not in r.stdout
    assert len(world.served.bytes_of(".pyz")) == 1


def test_sigkill_during_the_rebuild_is_recovered_and_the_next_update_succeeds(
    world: World, tmp_path: Path
) -> None:
    url, repo = _released(world, "killed", world.v1, world.v2, world.builds["dep"])
    inst = _install(world.v2, tmp_path)
    staging = inst.pyz.parent / ".nsapp.pyz.update"
    world.served.slow = 0.02  # 4 KiB per 20 ms: the delta takes a few seconds
    try:
        p = subprocess.Popen([PY, str(inst.pyz), "update", "--repo", url], env=inst.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (staging / "delta").exists() or (staging / "delta").stat().st_size < 8192:
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL)
        p.communicate()
    finally:
        world.served.slow = 0.0
    assert file_digest(inst.pyz) == file_digest(world.v2)  # the old build, untouched
    assert staging.exists()  # the half-built leftovers, until the next start
    r = inst.run("history")  # any start but --version (its fast path recovers nothing)
    assert r.returncode == 0, r.stderr
    assert not staging.exists()  # the journal's recovery removed them
    r, deltas, fulls = _update(world, inst, url)
    assert r.returncode == 0, r.stderr
    assert file_digest(inst.pyz) == file_digest(world.builds["dep"])
    assert fulls == [] and len(deltas) == 1


def test_no_delta_is_made_from_a_base_file_that_is_not_its_signed_bytes(world: World) -> None:
    from selfupdate.releases import publish

    repo = world.repo("tampered-base")
    publish.publish_build(world.keys, repo, world.v1)
    (base_file,) = (repo / "targets" / "nsapp" / "stable").glob("*.nsapp-1.0.0.pyz")
    _corrupt(base_file)
    result = publish.publish_build(world.keys, repo, world.v2)
    assert result.deltas == []
    assert any("does not match its signed length and hash" in w for w in result.warnings)


def _signed_as_delta(world: World, repo: Path, path: str, data: bytes) -> None:
    """Replace the delta target ``path`` by ``data`` and sign it, as a publisher whose targets
    key is compromised could: length and hash in the metadata are the hostile file's."""
    from selfupdate.releases import _repo
    from selfupdate.releases.publish import _Chain, _Repo

    days = _repo.expiry_days(world.keys, None)
    chain = _Chain(world.keys, _Repo(repo), days, _repo.now_utc(None))
    tf = chain.targets.signed.targets[path]
    sha = hashlib.sha256(data).hexdigest()
    d, _, name = path.rpartition("/")
    (repo / "targets" / d / f"{sha}.{name}").write_bytes(data)
    tf.length, tf.hashes = len(data), {"sha256": sha}
    chain.from_targets()


def test_a_hostile_but_signed_delta_falls_back_and_never_installs_a_wrong_file(
    world: World, tmp_path: Path
) -> None:
    url, repo = _released(world, "hostile", world.v1, world.v2, world.builds["app"])
    path = "nsapp/stable/nsapp-2.0.0-to-2.0.1.delta"
    good = _delta_file(repo, "nsapp-2.0.0-to-2.0.1.delta").read_bytes()
    # Its header names the right base and target; then a COPY from beyond the base's end.
    _signed_as_delta(world, repo, path, good[:88] + op_copy(2**40, 10) + b"E")
    inst = _install(world.v2, tmp_path)
    r, deltas, fulls = _update(world, inst, url)
    assert r.returncode == 0, r.stderr
    assert file_digest(inst.pyz) == file_digest(world.builds["app"])
    fell = _fell_back(r)
    assert len(fell) == 1 and "beyond the end of the base" in fell[0], r.stdout + r.stderr
    assert len(deltas) == 1 and len(fulls) == 1
