"""Fleet releases (issue 15): phased rollout, pause, critical, mirrors and a cache-friendly
repository, against the repository served by a real nginx with the shipped configuration
(docs/nginx-repo.conf).

The fleet is simulated cheaply: each client is an install ID and its own small metadata
directory, checked in process through the client API, against nginx.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _support_client import (
    Pub,
    assert_sentence,
    make_pub,
    no_proxy_env,  # noqa: F401 - fixture, used through pytestmark
)
from _support_nginx import nginx_binary, serve
from test_update_e2e import (  # noqa: F401 - the fixtures, by their names
    V1,
    V2,
    Install,
    World,
    inst_fixture,
    server_fixture,
    sha,
    world_fixture,
)

from selfupdate import errors
from selfupdate.releases import _rollout, publish
from selfupdate.releases._install_id import read_or_make
from selfupdate.releases.client import UpdateClient

pytestmark = pytest.mark.usefixtures("no_proxy_env")

FLEET = 200
IDS = [f"fleet-{i:04d}" for i in range(FLEET)]  # fixed: the shares below are reproducible

needs_nginx = pytest.mark.skipif(
    nginx_binary() is None, reason="nginx is not installed (Debian: apt-get install nginx)"
)


# ---------------------------------------------------------------------------------------------
# The pure decision


def test_placement_is_monotonic_in_the_share_and_salted_per_release() -> None:
    for iid in IDS[:50]:
        ins = [_rollout.in_rollout(iid, "nsapp", "2.1.0", p) for p in range(1, 101)]
        assert ins == sorted(ins), "once in, a machine stays in at every larger share"
        assert ins[-1], "100% is every machine"
    first = {i for i in IDS if _rollout.in_rollout(i, "nsapp", "2.1.0", 25)}
    again = {i for i in IDS if _rollout.in_rollout(i, "nsapp", "2.1", 25)}
    assert first == again, "2.1 and 2.1.0 are one release"
    other = {i for i in IDS if _rollout.in_rollout(i, "nsapp", "2.2.0", 25)}
    assert first != other and len(first & other) < len(first) * 0.6


def test_schedule_grows_the_share_from_signed_times_by_the_clients_clock() -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    ro = _rollout.Rollout(10, since=start, step=20, every=86400)
    assert ro.share(start - timedelta(days=3)) == 10  # a clock behind: never below the start
    assert ro.share(start + timedelta(hours=23)) == 10
    assert ro.share(start + timedelta(days=2)) == 50
    assert ro.share(start + timedelta(days=30)) == 100
    assert ro.describe(start) == "10%, +20% every 1d"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"percent": 0}, "1-100"),
        ({"percent": 101}, "1-100"),
        ({"percent": 10, "step": 5}, "both"),
        ({"step": 5, "every": 3600}, "start share"),
        ({"percent": 10, "critical": True}, "critical"),
    ],
)
def test_bad_rollouts_are_refused_in_one_sentence(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words) as e:
        _rollout.rollout_fields(now=datetime.now(UTC), **kwargs)
    assert_sentence(str(e.value))


def test_install_id_is_made_once_0600_and_never_follows_a_planted_link(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = read_or_make(state / "install-id")
    assert read_or_make(state / "install-id") == first
    assert (state / "install-id").stat().st_mode & 0o777 == 0o600
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state / "install-id").unlink()
    (state / "install-id").symlink_to(victim)
    new = read_or_make(state / "install-id")
    assert victim.read_text() == "precious\n", "the link was followed"
    assert not (state / "install-id").is_symlink() and new != first
    os.mkfifo(state / "fifo-id")  # a FIFO is never opened blocking, and is replaced
    assert read_or_make(state / "fifo-id") != new


# ---------------------------------------------------------------------------------------------
# The fleet against nginx


def _publish(pub: Pub, version: str, **phases: Any) -> None:
    build = pub.builds / f"nsapp-{version}.pyz"
    build.write_bytes(f"build {version}\n".encode())
    publish.publish(pub.keys, pub.repo, build, version, **phases)


def _fleet(pub: Pub, url: str, tmp: Path, n: int = FLEET) -> list[UpdateClient]:
    return [
        UpdateClient("nsapp", url, pub.root, cache_dir=tmp / "fleet" / str(i), install_id=IDS[i])
        for i in range(n)
    ]


def _offered(clients: list[UpdateClient], current: str) -> set[str]:
    out = set()
    for c in clients:
        release = c.check(current)
        if release is not None:
            out.add(c._install_id())
    return out


@needs_nginx
def test_rollout_share_raise_pause_and_resalt_across_a_fleet(
    tmp_path: Path
) -> None:
    pub = make_pub(tmp_path)
    pub.publish("2.0.0")
    _publish(pub, "2.1.0", rollout=25)
    with serve(pub.repo, tmp_path / "nginx") as ng:
        fleet = _fleet(pub, ng.url, tmp_path)
        first = _offered(fleet, "2.0.0")
        sigma = math.sqrt(FLEET * 0.25 * 0.75)
        assert abs(len(first) - FLEET * 0.25) <= 4 * sigma, len(first)
        outside = next(c for c in fleet if c._install_id() not in first)
        assert outside.rollout_waiting == _rollout.Waiting("2.1.0", 25, False)

        publish.set_rollout(pub.keys, pub.repo, "nsapp", "2.1.0", pause=True)
        assert _offered(fleet, "2.0.0") == set(), "a pause stops new offers at the next refresh"
        assert fleet[0].rollout_waiting == _rollout.Waiting("2.1.0", 25, True)
        on_it = fleet[0]
        assert on_it.check("2.1.0") is None and on_it.rollout_waiting is None  # stays, quietly

        publish.set_rollout(pub.keys, pub.repo, "nsapp", "2.1.0", resume=True)
        publish.set_rollout(pub.keys, pub.repo, "nsapp", "2.1.0", percent=100)
        assert _offered(fleet, "2.0.0") == set(IDS), "100%: every machine, the first among them"

        _publish(pub, "2.2.0", rollout=25)
        next_first = _offered(fleet, "2.1.0")
        assert next_first != first, "a new release picks its own first machines"
        # Outside 2.2.0's share, a machine on 2.0.0 is still offered 2.1.0 (fully out).
        waiting = next(c for c in fleet if c._install_id() not in next_first)
        assert waiting.check("2.0.0") is not None
        assert waiting.rollout_waiting == _rollout.Waiting("2.2.0", 25, False)
        # Cache-friendly: no query strings, and only versioned names beside timestamp.json.
        paths = [line.split()[1] for line in ng.log_lines()]
        assert not [p for p in paths if "?" in p]


@needs_nginx
def test_to_installs_a_paused_release_by_name_and_critical_skips_the_phases(
    tmp_path: Path
) -> None:
    pub = make_pub(tmp_path)
    pub.publish("2.0.0")
    _publish(pub, "2.1.0", rollout=5)
    publish.set_rollout(pub.keys, pub.repo, "nsapp", "2.1.0", pause=True)
    with serve(pub.repo, tmp_path / "nginx") as ng:
        client = _fleet(pub, ng.url, tmp_path, 1)[0]
        assert client.check("2.0.0") is None
        assert client.find("2.1.0", "2.0.0").version == "2.1.0"  # asked for by name
        _publish(pub, "2.2.0", critical=True)
        fleet = _fleet(pub, ng.url, tmp_path, 40)
        assert _offered(fleet, "2.0.0") == set(IDS[:40])
        with pytest.raises(errors.PublishError, match="critical"):
            publish.set_rollout(pub.keys, pub.repo, "nsapp", "2.2.0", percent=10)
        publish.set_rollout(pub.keys, pub.repo, "nsapp", "2.2.0", pause=True)  # a kill switch
        assert fleet[0].check("2.0.0") is None


@needs_nginx
def test_an_idle_check_is_two_small_requests_at_the_server(
    tmp_path: Path
) -> None:
    pub = make_pub(tmp_path)
    pub.publish("2.0.0")
    with serve(pub.repo, tmp_path / "nginx") as ng:
        client = _fleet(pub, ng.url, tmp_path, 1)[0]
        client.check("2.0.0")
        headers = _cache_headers(ng.url, pub)
        before = len(ng.log_lines())
        assert client.check("2.0.0") is None
        idle = [line.split() for line in ng.log_lines()[before:]]
    # TUF's root probe (the next root version: 404 is the usual answer) and the timestamp;
    # snapshot and targets come from the client's verified cache when the timestamp names them.
    assert [(m, p, s) for m, p, s, *_ in idle] == [
        ("GET", "/metadata/2.root.json", "404"),
        ("GET", "/metadata/timestamp.json", "200"),
    ]
    assert sum(int(x[4]) for x in idle) < 2000  # bytes sent, headers included
    forever = "public, max-age=31536000, immutable"
    assert headers == {
        "/metadata/timestamp.json": (200, "public, max-age=60"),
        "/metadata/1.root.json": (200, forever),
        "/metadata/2.root.json": (404, "public, max-age=60"),  # the root probe's usual answer
        "/metadata/1.snapshot.json": (200, forever),
        "TARGET": (200, forever),
        "/targets/nsapp/.publish.x.tmp": (404, None),  # a publish in progress: never served
    }


def _cache_headers(url: str, pub: Pub) -> dict[str, tuple[int, str | None]]:
    """Status and Cache-Control of the shipped nginx configuration, per kind of file."""
    import urllib.error
    import urllib.request

    (pub.repo / "targets" / "nsapp" / ".publish.x.tmp").write_bytes(b"half")
    target = pub.url_path(pub.published["2.0.0"])
    out: dict[str, tuple[int, str | None]] = {}
    for path in ("/metadata/timestamp.json", "/metadata/1.root.json", "/metadata/2.root.json",
                 "/metadata/1.snapshot.json", target, "/targets/nsapp/.publish.x.tmp"):
        try:
            with urllib.request.urlopen(url + path) as r:
                got = (r.status, r.headers.get("Cache-Control"))
        except urllib.error.HTTPError as e:
            got = (e.code, e.headers.get("Cache-Control"))
        out["TARGET" if path == target else path] = got
    return out


@needs_nginx
def test_the_app_says_this_machine_is_not_in_the_rollout_yet(
    world: World, inst: Install, tmp_path: Path
) -> None:
    """End to end: `selfupdate publish --rollout`, nginx, the example app's `update`."""
    _, repo = world.repo("fleet-rollout")
    r = subprocess.run(
        [sys.executable, "-m", "selfupdate", "publish", "--keys", str(world.keys), "--repo",
         str(repo), str(world.v2), "--rollout", "25"], capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0 and "to 25% of the machines first" in r.stdout, r.stderr
    before = sha(inst.pyz)
    with serve(repo, tmp_path / "nginx") as ng:
        out_env = {**inst.env, "SELFUPDATE_INSTALL_ID": _outside(V2, 25)}
        sentence = f"nsapp {V2} is rolling out (25%); this machine is not in it yet (running {V1})"
        r = inst.run("update", "--check", "--repo", ng.url, env=out_env)
        assert (r.returncode, r.stdout.strip(), r.stderr) == (0, sentence, "")
        r = inst.run("update", "--repo", ng.url, env=out_env)
        assert (r.returncode, r.stdout.strip()) == (0, sentence), r.stderr
        assert sha(inst.pyz) == before
        r = inst.run("update", "--check", "--json", "--repo", ng.url, env=out_env)
        report = json.loads(r.stdout)
        assert report["status"] == "up-to-date" and report["rollout"] == {
            "version": V2, "percent": 25, "paused": False}  # fmt: skip
        in_env = {**inst.env, "SELFUPDATE_INSTALL_ID": _inside(V2, 25)}
        assert inst.run("update", "--check", "--repo", ng.url, env=in_env).returncode == 100
        # Without the variable the machine makes its own ID, kept outside the snapshots.
        inst.run("update", "--check", "--repo", ng.url)
        assert (inst.state / "install-id").stat().st_mode & 0o777 == 0o600
        # Mirrors: a refused first one is passed over (-v says who served); all refused is
        # one sentence naming them.
        from _support_client import free_port

        dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
        r = inst.run("-v", "update", "--check", "--repo", dead[0], "--repo", ng.url, env=in_env)
        assert r.returncode == 100, r.stderr
        assert f"nsapp: metadata from {ng.url}" in r.stderr
        r = inst.run("update", "--check", "--repo", dead[0], "--repo", dead[1], env=in_env)
        line = r.stderr.strip()
        assert r.returncode == 1 and "\n" not in line and "no mirror" in line, r.stderr
        assert all(f"{u} (Connection refused)" in line for u in dead), line
        assert sha(inst.pyz) == before
        # In the rollout, through a dead first mirror: installed, and the summary says whence.
        r = inst.run("update", "--repo", dead[0], "--repo", ng.url, env=in_env)
        assert r.returncode == 0, r.stderr
        assert f"downloaded {V2} from {ng.url}" in r.stdout, r.stdout
        assert inst.pyz.read_bytes() == world.v2.read_bytes()


def _inside(version: str, percent: int) -> str:
    return next(i for i in IDS if _rollout.in_rollout(i, "nsapp", version, percent))


def _outside(version: str, percent: int) -> str:
    return next(i for i in IDS if not _rollout.in_rollout(i, "nsapp", version, percent))


def test_rollout_command_output_and_status(tmp_path: Path) -> None:
    pub = make_pub(tmp_path)
    pub.publish("2.0.0")
    base = [sys.executable, "-m", "selfupdate"]
    keys = ["--keys", str(pub.keys), "--repo", str(pub.repo)]
    r = subprocess.run([*base, "rollout", *keys, "nsapp", "2.0.0", "--percent", "30",
                        "--rollout-step", "10", "--rollout-every", "1d"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "nsapp 2.0.0 on channel stable is rolling out at 30%, +10% every 1d"
    r = subprocess.run([*base, "rollout", *keys, "nsapp", "2.0.0", "--pause"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.stdout.strip() == "nsapp 2.0.0 on channel stable is paused at 30%"
    r = subprocess.run([*base, "rollout", *keys, "nsapp", "9.9.9", "--resume"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    r = subprocess.run([*base, "status", "--repo", str(pub.repo)], capture_output=True, text=True)
    assert "nsapp stable: 2.0.0 [paused at 30%] (newest 2.0.0)" in r.stdout, r.stdout
    r = subprocess.run([*base, "status", "--json", "--repo", str(pub.repo)],
                       capture_output=True, text=True)  # fmt: skip
    listed = json.loads(r.stdout)["channels"][0]["releases"][0]["rollout"]
    assert (listed["percent"], listed["paused"], listed["every"]) == (30, True, 86400)
    target = json.loads(pub.current("targets").read_bytes())["signed"]["targets"]
    fields = target["nsapp/stable/nsapp-2.0.0.pyz"]["custom"]["selfupdate"]["rollout"]
    assert fields["paused"] is True and fields["percent"] == 30 and fields["step"] == 10


def test_a_larger_share_keeps_every_machine_that_was_in_and_a_pause_keeps_the_share(
    tmp_path: Path,
) -> None:
    """The same decisions as the fleet sees them, for every share (pure, over 1,000 IDs)."""
    ids = [f"pure-{i:05d}" for i in range(1000)]
    targets = {}
    pub = make_pub(tmp_path)
    pub.publish("2.0.0")
    _publish(pub, "2.1.0", rollout=10)
    now = datetime.now(UTC)
    before: set[str] = set()
    for percent in (10, 35, 70, 99):
        publish.set_rollout(pub.keys, pub.repo, "nsapp", "2.1.0", percent=percent)
        targets = _verified_targets(pub)
        offered = {i for i in ids if not _rollout.held_back(
            targets, "nsapp", "stable", lambda i=i: i, now)}  # fmt: skip
        assert before <= offered
        assert abs(len(offered) - 10 * percent) <= 4 * math.sqrt(1000 * percent / 100)
        before = offered
    changes = publish.set_rollout(pub.keys, pub.repo, "nsapp", "2.1.0", pause=True)
    assert changes[0].rollout == _rollout.Rollout(99, True, changes[0].rollout.since)
    changes = publish.set_rollout(pub.keys, pub.repo, "nsapp", "2.1.0", percent=50)
    assert changes[0].rollout.paused, "only --resume lifts a pause"
    assert "keep it" in (changes[0].warning or "")


def _verified_targets(pub: Pub) -> dict:
    from tuf.api.metadata import Metadata

    return dict(Metadata.from_bytes(pub.current("targets").read_bytes()).signed.targets)


# ---------------------------------------------------------------------------------------------
# Mirrors


class _Silent:
    """A server that accepts connections and never answers: a dead mirror, as a timeout."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[object] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # kept open, never answered


def _mirror_client(pub: Pub, urls: list[str], tmp: Path) -> UpdateClient:
    from selfupdate.releases._fetch import FetchConfig

    return UpdateClient("nsapp", " ".join(urls), pub.root, cache_dir=tmp / "mcache",
                        install_id=IDS[0], config=FetchConfig(read_timeout=1.0))  # fmt: skip


def _download(client: UpdateClient, current: str, tmp: Path) -> bytes:
    release = client.check(current)
    assert release is not None
    with open(tmp / "dl", "wb") as f:
        client.download_to(release, f)
    return (tmp / "dl").read_bytes()


@needs_nginx
def test_a_dead_first_mirror_costs_one_timeout(tmp_path: Path) -> None:
    pub = make_pub(tmp_path)
    rel = pub.publish("2.0.0")
    dead = _Silent()
    with serve(pub.repo, tmp_path / "nginx") as ng:
        client = _mirror_client(pub, [dead.url, ng.url], tmp_path)
        assert _download(client, "1.0.0", tmp_path) == pub.target_file(rel).read_bytes()
        assert client.served_by == {"metadata": ng.url, "release": ng.url}
    assert len(dead.accepted) == 1, "the dead mirror is tried once, then last"
    assert [base for base, _ in client.fetcher.failures] == [dead.url]


@needs_nginx
def test_a_lying_first_mirror_costs_a_retry_never_a_wrong_install(
    tmp_path: Path
) -> None:
    import shutil

    pub = make_pub(tmp_path)
    rel = pub.publish("2.0.0")
    liar = tmp_path / "liar"
    shutil.copytree(pub.repo, liar)
    evil = pub.target_file(rel).read_bytes().replace(b"build 2.0.0", b"build 6.6.6")
    (liar / pub.url_path(rel).lstrip("/")).write_bytes(evil)
    with serve(liar, tmp_path / "ng-liar") as bad, serve(pub.repo, tmp_path / "ng") as good:
        client = _mirror_client(pub, [bad.url, good.url], tmp_path)
        assert _download(client, "1.0.0", tmp_path) == pub.target_file(rel).read_bytes()
        assert client.served_by == {"metadata": bad.url, "release": good.url}
        # Tampered metadata: a forged timestamp (bad signature) on the first mirror.
        pub.publish("2.1.0")
        shutil.rmtree(liar)
        shutil.copytree(pub.repo, liar)
        ts = json.loads((liar / "metadata" / "timestamp.json").read_bytes())
        ts["signed"]["version"] += 7
        (liar / "metadata" / "timestamp.json").write_text(json.dumps(ts))
        client = _mirror_client(pub, [bad.url, good.url], tmp_path)
        release = client.check("2.0.0")
        assert release is not None and release.version == "2.1.0"
        assert client.fetcher.failures[0][0] == bad.url
        assert "failed verification" in client.fetcher.failures[0][1]


def test_all_mirrors_down_is_one_sentence_naming_them(tmp_path: Path) -> None:
    from _support_client import free_port

    pub = make_pub(tmp_path)
    pub.publish("2.0.0")
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}/repo"]
    client = _mirror_client(pub, urls, tmp_path)
    with pytest.raises(errors.MirrorsFailedError) as e:
        client.check("1.0.0")
    msg = str(e.value)
    assert_sentence(msg)
    assert all(f"{u} (Connection refused)" in msg for u in urls), msg
    assert [base for base, _ in e.value.failures] == urls


STALE_CACHE_CONF = """
# A cache that kept an old timestamp.json (two CDN nodes out of step): it serves the stale copy
# unless the request says Cache-Control: no-cache.
server {
    listen 80;
    root /srv/selfupdate-repo;
    location = /metadata/timestamp.json {
        set $ts /stale-timestamp.json;
        if ($http_cache_control = "no-cache") { set $ts /metadata/timestamp.json; }
        try_files $ts /metadata/timestamp.json =404;
    }
}
"""


@needs_nginx
def test_a_stale_cached_timestamp_is_asked_for_again_not_taken_for_a_rollback(
    tmp_path: Path,
) -> None:
    pub = make_pub(tmp_path)
    pub.publish("2.0.0")
    old = pub.meta("timestamp.json").read_bytes()
    pub.publish("2.1.0")
    conf = tmp_path / "stale.conf"
    conf.write_text(STALE_CACHE_CONF)
    with serve(pub.repo, tmp_path / "nginx", server_conf=conf) as ng:
        client = _fleet(pub, ng.url, tmp_path, 1)[0]
        assert client.check("2.0.0").version == "2.1.0"  # fresh: nothing stale cached yet
        (pub.repo / "stale-timestamp.json").write_bytes(old)
        release = client.check("2.0.0")
        assert release is not None and release.version == "2.1.0"
        assert client.fetcher.revalidate
        fresh = _fleet(pub, ng.url, tmp_path / "other", 1)[0]
        assert fresh.check("2.0.0") is None  # a new client trusts the stale copy: no error
        # A repository that really went back (no cache to ask) is still a rollback.
        pub.meta("timestamp.json").write_bytes(old)
        with pytest.raises(errors.RollbackError):
            client.check("2.0.0")


def test_a_withdrawn_release_has_no_rollout_and_a_rollout_release_can_be_withdrawn(
    tmp_path: Path,
) -> None:
    from selfupdate.releases._archive import RefusedError

    pub = make_pub(tmp_path)
    pub.publish("2.0.0")
    _publish(pub, "2.1.0", rollout=20)
    assert publish.yank(pub.keys, pub.repo, "nsapp", "2.1.0")  # whatever its rollout
    targets = _verified_targets(pub)
    assert _rollout.held_back(targets, "nsapp", "stable", lambda: IDS[0], datetime.now(UTC)) == {}
    assert "rollout" not in json.dumps(targets["nsapp/stable/nsapp-2.1.0.pyz"].custom)
    with pytest.raises(RefusedError, match="withdrawn one cannot be rolled out") as e:
        publish.set_rollout(pub.keys, pub.repo, "nsapp", "2.1.0", resume=True)
    assert_sentence(str(e.value))


def test_a_schedule_grows_the_share_from_its_signed_start(tmp_path: Path) -> None:
    pub = make_pub(tmp_path)
    pub.publish("2.0.0")
    two_days_ago = datetime.now(UTC) - timedelta(days=2, minutes=1)
    _publish(pub, "2.1.0", rollout=10, schedule=(20, 86400), now=two_days_ago)
    targets = _verified_targets(pub)
    now = datetime.now(UTC)
    held = [_rollout.held_back(targets, "nsapp", "stable", lambda i=i: i, now) for i in IDS]
    waiting = [w for h in held for w in h.values()]
    assert {w.percent for w in waiting} == {50}, "10% + 2 steps of 20 points"
    offered = FLEET - len(waiting)
    assert abs(offered - FLEET * 0.5) <= 4 * math.sqrt(FLEET * 0.25)
    # A pause freezes it there; a resume continues from the frozen share.
    change = publish.set_rollout(pub.keys, pub.repo, "nsapp", "2.1.0", pause=True)[0]
    assert change.rollout is not None and change.rollout.percent == 50
    change = publish.set_rollout(pub.keys, pub.repo, "nsapp", "2.1.0", resume=True)[0]
    assert change.rollout is not None and (change.rollout.share(now), change.rollout.step) == (
        50, 20)  # fmt: skip
