"""``selfupdate publish`` checks the build it signs, and ``yank``/``prune`` take releases back;
the command line's conventions (environment defaults, -q/-v, --json, closed pipes, --help).

Real builds (``build_pyz``, and a tiny app of another name made by ``selfupdate build``), the
CLI as a process; every refusal is one sentence, exit 2, and leaves the repository's files
byte-identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from _support_client import make_build, make_pub
from test_build import _app, _selfupdate_build
from test_publish import (
    REPO,
    assert_error,
    assert_refused,
    meta,
    raw_publish,
    snapshot_tree,
    su,
)

from selfupdate.releases._trust import MAX_NOTES_BYTES


@dataclass
class World:
    """One repository (made once per module) and builds made against it."""

    keys: Path
    repo: Path
    v1: Path  # nsapp 1.0.0, this repository's root
    v2: Path  # nsapp 2.0.0, this repository's root
    no_root: Path  # nsapp 2.0.0, no embedded root
    foreign_root: Path  # nsapp 2.0.0, the root of another repository
    other_app: Path  # hello 2.0.0, this repository's root


@pytest.fixture(scope="module")
def world(build_pyz: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("publish-checks")
    keys, repo = tmp / "keys", tmp / "repo"
    assert su("init", "--keys", keys, "--repo", repo, "--app", "nsapp").returncode == 0
    other = tmp / "other"
    proc = su("init", "--keys", other / "k", "--repo", other / "r", "--app", "nsapp")
    assert proc.returncode == 0, proc.stderr
    root = repo / "metadata" / "root.json"
    project = _app(tmp, "hello", version="2.0.0")
    proc = _selfupdate_build(str(project), "--trusted-root", str(root))
    assert proc.returncode == 0, proc.stderr
    return World(
        keys,
        repo,
        v1=build_pyz("1.0.0", trusted_root=root),
        v2=build_pyz("2.0.0", trusted_root=root),
        no_root=build_pyz("2.0.0"),
        foreign_root=build_pyz("2.0.0", trusted_root=other / "r" / "metadata" / "root.json"),
        other_app=Path(proc.stdout.strip().splitlines()[-1]),
    )


@pytest.fixture
def fresh(world: World, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the module's repository and keys (same root), for one test to change."""
    keys, repo = tmp_path / "keys", tmp_path / "repo"
    shutil.copytree(world.keys, keys)  # copy2 keeps the modes: 0700 / 0600
    shutil.copytree(world.repo, repo)
    return keys, repo


def publish(keys: Path, repo: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return su("publish", "--keys", keys, "--repo", repo, *args)


def targets(repo: Path) -> dict[str, dict[str, object]]:
    """The current targets metadata's targets."""
    ts = meta(repo, "timestamp.json")
    snap = meta(repo, f"{ts['meta']['snapshot.json']['version']}.snapshot.json")  # type: ignore[index]
    tg = meta(repo, f"{snap['meta']['targets.json']['version']}.targets.json")  # type: ignore[index]
    out = tg["targets"]
    assert isinstance(out, dict)
    return out


# ---------------------------------------------------------------------------------------------
# publish: the build is what it is published as


def test_publish_takes_app_and_version_from_the_build(
    world: World, fresh: tuple[Path, Path]
) -> None:
    keys, repo = fresh
    proc = publish(keys, repo, world.v2)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "published nsapp 2.0.0 on channel stable" in proc.stdout
    entry = targets(repo)["nsapp/stable/nsapp-2.0.0.pyz"]
    assert entry["custom"] == {
        "selfupdate": {"app": "nsapp", "channel": "stable", "version": "2.0.0"}
    }
    sha = entry["hashes"]["sha256"]  # type: ignore[index]
    stored = repo / "targets" / "nsapp" / "stable" / f"{sha}.nsapp-2.0.0.pyz"
    assert stored.read_bytes() == world.v2.read_bytes()


def test_publish_refuses_a_version_other_than_the_builds(
    world: World, fresh: tuple[Path, Path]
) -> None:
    """The endless update loop: a 2.0.0 build published as 2.0.1 is offered forever."""
    keys, repo = fresh
    before = snapshot_tree(repo)
    assert_refused(publish(keys, repo, world.v2, "--version", "2.0.1"), "is version 2.0.0")
    assert snapshot_tree(repo) == before
    # The same version written another way is the build's own: published as the build says.
    proc = publish(keys, repo, world.v2, "--version", "2.0")
    assert proc.returncode == 0, proc.stderr
    assert "nsapp/stable/nsapp-2.0.0.pyz" in targets(repo)


def test_publish_refuses_another_apps_build(world: World, fresh: tuple[Path, Path]) -> None:
    keys, repo = fresh
    before = snapshot_tree(repo)
    assert_refused(publish(keys, repo, world.other_app), "a build of 'hello', not of 'nsapp'")
    # --app names the app this release is for: the build must be of that app too.
    assert_refused(
        publish(keys, repo, world.v2, "--app", "hello"), "a build of 'nsapp', not of 'hello'"
    )
    assert snapshot_tree(repo) == before
    proc = publish(keys, repo, world.other_app, "--app", "hello")  # a second app, on purpose
    assert proc.returncode == 0, proc.stderr


def test_publish_refuses_a_build_without_an_embedded_root(
    world: World, fresh: tuple[Path, Path]
) -> None:
    keys, repo = fresh
    before = snapshot_tree(repo)
    assert_refused(publish(keys, repo, world.no_root), "embeds no trusted root", "--trusted-root")
    assert snapshot_tree(repo) == before


def test_publish_refuses_a_build_with_the_root_of_another_repository(
    world: World, fresh: tuple[Path, Path]
) -> None:
    keys, repo = fresh
    before = snapshot_tree(repo)
    assert_refused(publish(keys, repo, world.foreign_root), "none of the roots of")
    assert snapshot_tree(repo) == before


def test_publish_accepts_a_build_embedding_an_older_root_of_the_chain(
    world: World, fresh: tuple[Path, Path]
) -> None:
    """Clients walk the root chain from the root they embed: 1.root.json still verifies
    updates after the root was rotated."""
    keys, repo = fresh
    assert su("rotate", "--keys", keys, "--repo", repo, "--role", "root").returncode == 0
    assert (repo / "metadata" / "2.root.json").exists()
    proc = publish(keys, repo, world.v2)
    assert proc.returncode == 0, proc.stderr


def test_publish_refuses_a_file_that_is_not_a_build(
    world: World, fresh: tuple[Path, Path], tmp_path: Path
) -> None:
    keys, repo = fresh
    before = snapshot_tree(repo)
    blob = tmp_path / "tool.bin"
    blob.write_bytes(b"\x7fELF not a zip")
    assert_refused(publish(keys, repo, blob, "--version", "1.0"), "not a zip")
    plain = make_build(tmp_path / "plain.pyz", "1.0")  # a zip with a __main__.py, no config
    assert_refused(publish(keys, repo, plain, "--version", "1.0"), "no release configuration")
    assert snapshot_tree(repo) == before


def _with_config(src: Path, out: Path, config: bytes) -> Path:
    """A copy of the build ``src`` whose release configuration is ``config``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("selfupdate/_build_config.py"):
                data = config
            zout.writestr(info, data)
    return out


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (b"import os\nAPP = 'nsapp'\n", "is not NAME = literal"),
        (b"APP = __import__('pathlib').Path('{marker}').touch() or 'nsapp'\n", "not a literal"),
        (b"APP = 'nsapp'\nVERSION = '2.0.0'\n", "it has no CHANNEL"),
        (
            b"APP = 'nsapp'\nVERSION = 2\nCHANNEL = 'stable'\nREPO_URL = None\n"
            b"TRUSTED_ROOT = True\n",
            "VERSION is a int",
        ),
        (b"APP = (\n", "does not parse"),
        (b"X = '" + b"x" * 70_000 + b"'\n", "larger than"),
    ],
)
def test_a_release_configuration_is_read_never_run(
    world: World, fresh: tuple[Path, Path], tmp_path: Path, config: bytes, needle: str
) -> None:
    keys, repo = fresh
    marker = tmp_path / "ran"
    build = _with_config(world.v2, tmp_path / "b.pyz", config.replace(b"{marker}", bytes(marker)))
    before = snapshot_tree(repo)
    assert_refused(publish(keys, repo, build), needle)
    assert snapshot_tree(repo) == before
    assert not marker.exists()


def test_publish_refuses_an_older_version_unless_told(
    world: World, fresh: tuple[Path, Path]
) -> None:
    keys, repo = fresh
    assert publish(keys, repo, world.v2).returncode == 0
    before = snapshot_tree(repo)
    assert_refused(publish(keys, repo, world.v1), "not newer than 2.0.0", "--allow-downgrade")
    assert_refused(publish(keys, repo, world.v2), "not newer")  # the same version again
    assert_refused(publish(keys, repo, world.v2, "--allow-downgrade"), "already published")
    assert snapshot_tree(repo) == before
    proc = publish(keys, repo, world.v1, "--allow-downgrade")
    assert proc.returncode == 0, proc.stderr
    assert "nsapp/stable/nsapp-1.0.0.pyz" in targets(repo)


def test_publish_on_another_channel_than_the_build_follows_warns(
    world: World, fresh: tuple[Path, Path]
) -> None:
    keys, repo = fresh
    proc = publish(keys, repo, world.v2, "--channel", "beta")
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "follow 'stable'" in proc.stderr
    assert "nsapp/beta/nsapp-2.0.0.pyz" in targets(repo)


def test_release_notes_travel_in_signed_metadata(
    world: World, fresh: tuple[Path, Path], tmp_path: Path
) -> None:
    keys, repo = fresh
    notes = tmp_path / "NOTES.md"
    notes.write_text("Faster start.\n\n- fixes the greeting\n", encoding="utf-8")
    proc = publish(keys, repo, world.v1, "--notes", notes)
    assert proc.returncode == 0, proc.stderr
    proc = publish(keys, repo, world.v2, "--notes", "Fixes the greeting.")
    assert proc.returncode == 0, proc.stderr
    tg = targets(repo)
    assert tg["nsapp/stable/nsapp-1.0.0.pyz"]["custom"]["selfupdate"]["notes"] == (  # type: ignore[index]
        notes.read_text(encoding="utf-8")
    )
    assert tg["nsapp/stable/nsapp-2.0.0.pyz"]["custom"]["selfupdate"]["notes"] == (  # type: ignore[index]
        "Fixes the greeting."
    )
    status = json.loads(su("status", "--repo", repo, "--json").stdout)
    assert [r["notes"] for r in status["channels"][0]["releases"]] == [
        notes.read_text(encoding="utf-8"), "Fixes the greeting."
    ]


@pytest.mark.parametrize(
    ("notes", "needle"),
    [
        ("x" * (MAX_NOTES_BYTES + 1), "more than the 8192 allowed"),
        ("bold \x1b[1m text", "control characters"),
        ("   ", "empty"),
        ("CHANGES.md", "does not exist"),
    ],
)
def test_bad_release_notes_are_refused_and_nothing_written(
    world: World, fresh: tuple[Path, Path], notes: str, needle: str
) -> None:
    keys, repo = fresh
    before = snapshot_tree(repo)
    assert_error(publish(keys, repo, world.v2, "--notes", notes), needle)
    assert snapshot_tree(repo) == before


def test_publish_that_cannot_write_metadata_leaves_no_target_file(
    world: World, fresh: tuple[Path, Path]
) -> None:
    keys, repo = fresh
    # A directory where the next targets metadata goes: its os.replace fails, also as root.
    (repo / "metadata" / "2.targets.json").mkdir()
    before = snapshot_tree(repo)
    assert_error(publish(keys, repo, world.v2))
    assert snapshot_tree(repo) == before


def test_keys_are_checked_before_the_build(world: World, fresh: tuple[Path, Path]) -> None:
    _, repo = fresh
    other = repo.parent / "other-keys"
    assert su("init", "--keys", other, "--repo", repo.parent / "r2", "--app", "x").returncode == 0
    assert_error(publish(other, repo, world.no_root, "--app", "nsapp"), "not one the")


# ---------------------------------------------------------------------------------------------
# yank and prune


@pytest.fixture
def released(tmp_path: Path) -> tuple[Path, Path]:
    """A repository with nsapp 1.0, 1.1, 1.2 and 2.0 on stable and 3.0b1 on beta (stand-in
    builds, signed in process: yank and prune do not look inside builds)."""
    pub = make_pub(tmp_path)
    build = make_build(tmp_path / "build", "x")  # no suffix: targets are nsapp/CHANNEL/nsapp-V
    for v in ("1.0", "1.1", "1.2", "2.0"):
        raw_publish(pub.keys, pub.repo, build, v)
    raw_publish(pub.keys, pub.repo, build, "3.0b1", "beta")
    return pub.keys, pub.repo


def _client_offers(repo: Path, current: str, tmp_path: Path, channel: str = "stable") -> str | None:
    """What a real update client running ``current`` is offered from ``repo``."""
    from selfupdate.releases.client import UpdateClient

    client = UpdateClient(
        "nsapp", str(repo), (repo / "metadata" / "1.root.json").read_bytes(), channel=channel,
        cache_dir=Path(tempfile.mkdtemp(dir=tmp_path)),  # a fresh client every time
    )  # fmt: skip
    found = client.check(current)
    return found.version if found else None


def test_yank_withdraws_a_release_from_every_client(
    released: tuple[Path, Path], tmp_path: Path
) -> None:
    keys, repo = released
    assert _client_offers(repo, "1.2", tmp_path) == "2.0"
    proc = su("yank", "--keys", keys, "--repo", repo, "nsapp", "2.0", "--reason", "eats data")
    assert proc.returncode == 0, proc.stderr
    assert "withdrew nsapp 2.0 on channel stable" in proc.stdout
    assert _client_offers(repo, "1.2", tmp_path) is None  # no longer offered
    assert _client_offers(repo, "1.0", tmp_path) == "1.2"  # the newest that is not withdrawn
    entry = targets(repo)["nsapp/stable/nsapp-2.0"]
    fields = entry["custom"]["selfupdate_withdrawn"]  # type: ignore[index]
    assert "selfupdate" not in entry["custom"]  # type: ignore[operator]
    assert fields["version"] == "2.0" and fields["reason"] == "eats data"
    assert fields["withdrawn"].endswith("Z")
    d, _, name = "nsapp/stable/nsapp-2.0".rpartition("/")
    assert (repo / "targets" / d / f"{entry['hashes']['sha256']}.{name}").exists()  # type: ignore[index]
    status = su("status", "--repo", repo)
    assert "nsapp stable: 1.0, 1.1, 1.2 (newest 1.2); withdrawn: 2.0" in status.stdout
    # Withdrawn stays withdrawn: the same version cannot be published again.
    build = make_build(tmp_path / "again.pyz", "x")
    with pytest.raises(Exception, match="not newer"):
        raw_publish(keys, repo, build, "2.0")


def test_yank_of_a_release_that_does_not_exist_is_refused(released: tuple[Path, Path]) -> None:
    keys, repo = released
    before = snapshot_tree(repo)
    assert_refused(su("yank", "--keys", keys, "--repo", repo, "nsapp", "9.9"), "is not a release")
    assert_refused(
        su("yank", "--keys", keys, "--repo", repo, "nsapp", "2.0", "--channel", "beta"),
        "is not a release on channel 'beta'",
    )
    assert snapshot_tree(repo) == before


def test_yank_twice_changes_nothing_the_second_time(released: tuple[Path, Path]) -> None:
    keys, repo = released
    assert su("yank", "--keys", keys, "--repo", repo, "nsapp", "1.1").returncode == 0
    before = snapshot_tree(repo)
    proc = su("yank", "--keys", keys, "--repo", repo, "nsapp", "1.1")
    assert proc.returncode == 0 and "already withdrawn" in proc.stdout, proc
    assert snapshot_tree(repo) == before


def test_prune_keeps_the_newest_per_channel_and_removes_the_files(
    released: tuple[Path, Path], tmp_path: Path
) -> None:
    keys, repo = released
    assert su("yank", "--keys", keys, "--repo", repo, "nsapp", "1.1").returncode == 0
    before = snapshot_tree(repo)
    dry = su("prune", "--keys", keys, "--repo", repo, "--keep", "2", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert snapshot_tree(repo) == before
    gone = ["nsapp/stable/nsapp-1.0", "nsapp/stable/nsapp-1.1"]
    # and the deltas from or to them (to 1.1: withdrawn, no client is offered it)
    stale = sorted(p for p in targets(repo) if p.endswith(".delta")
                   and ("-1.0-" in p or "-1.1-" in p or p.endswith("-to-1.1.delta")))
    assert stale, sorted(targets(repo))
    assert dry.stdout.split() == [w for p in gone + stale for w in ("would", "remove", p)]
    files = {p: targets(repo)[p]["hashes"]["sha256"] for p in gone}  # type: ignore[index]
    proc = su("prune", "--keys", keys, "--repo", repo, "--keep", "2")
    assert proc.returncode == 0, proc.stderr
    assert sorted(targets(repo)) == [
        "nsapp/beta/nsapp-3.0b1", "nsapp/stable/nsapp-1.2", "nsapp/stable/nsapp-1.2-to-2.0.delta",
        "nsapp/stable/nsapp-2.0",
    ]
    for path, sha in files.items():
        d, _, name = path.rpartition("/")
        assert not (repo / "targets" / d / f"{sha}.{name}").exists()
    assert _client_offers(repo, "1.0", tmp_path) == "2.0"  # the metadata still verifies
    assert _client_offers(repo, "1.0", tmp_path, "beta") == "3.0b1"
    proc = su("prune", "--keys", keys, "--repo", repo, "--keep", "2")
    assert proc.returncode == 0 and "nothing to remove" in proc.stdout


@pytest.mark.parametrize("keep", ["0", "-1", "two", "1.5"])
def test_prune_refuses_a_bad_number_in_one_line(released: tuple[Path, Path], keep: str) -> None:
    keys, repo = released
    before = snapshot_tree(repo)
    proc = su("prune", "--keys", keys, "--repo", repo, f"--keep={keep}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "argument --keep" in lines[0], proc.stderr
    assert snapshot_tree(repo) == before


# ---------------------------------------------------------------------------------------------
# The command line's conventions


def test_keys_and_repo_default_to_the_environment(released: tuple[Path, Path]) -> None:
    keys, repo = released
    env = dict(os.environ, PYTHONPATH=str(REPO), SELFUPDATE_KEYS=str(keys),
               SELFUPDATE_REPO=str(repo))  # fmt: skip
    for args in (["status"], ["refresh"], ["prune", "--keep", "9"]):
        proc = subprocess.run(
            [sys.executable, "-m", "selfupdate", *args], env=env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, (args, proc.stderr)
    proc = su("status")  # neither the flag nor the variable
    assert proc.returncode == 2 and "--repo" in proc.stderr


def test_status_json_has_the_documented_shape(released: tuple[Path, Path]) -> None:
    keys, repo = released
    assert su("yank", "--keys", keys, "--repo", repo, "nsapp", "1.1").returncode == 0
    proc = su("status", "--repo", repo, "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"format", "repository", "app", "roles", "channels", "warnings"}
    assert doc["format"] == 1 and doc["app"] == "nsapp" and doc["warnings"] == []
    assert [r["role"] for r in doc["roles"]] == ["root", "targets", "snapshot", "timestamp"]
    assert set(doc["roles"][0]) == {"role", "version", "expires", "keyids", "threshold"}
    assert doc["roles"][0]["expires"].endswith("Z")
    stable = next(c for c in doc["channels"] if c["channel"] == "stable")
    assert stable["newest"] == "2.0"
    assert [r["version"] for r in stable["releases"]] == ["1.0", "1.2", "2.0"]
    assert set(stable["releases"][0]) == {
        "version", "target_path", "length", "sha256", "notes", "rollout"}  # fmt: skip
    assert stable["withdrawn"] == [{
        "version": "1.1", "target_path": "nsapp/stable/nsapp-1.1",
        "withdrawn": stable["withdrawn"][0]["withdrawn"], "reason": None,
    }]  # fmt: skip


def test_a_closed_pipe_ends_quietly(released: tuple[Path, Path]) -> None:
    _, repo = released
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "selfupdate", "status", "--repo", str(repo)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0
    assert err == b"", err
    shell = subprocess.run(
        ["sh", "-c", f"{sys.executable} -m selfupdate status --repo {repo} | head -n 1"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shell.stdout.startswith("root ") and shell.stderr == "", shell


def test_quiet_and_verbose(world: World, fresh: tuple[Path, Path]) -> None:
    keys, repo = fresh
    proc = su("-q", "refresh", "--keys", keys, "--repo", repo)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc
    proc = su("publish", "-v", "--keys", keys, "--repo", repo, world.v2)
    assert proc.returncode == 0, proc.stderr
    assert "checked " in proc.stdout and "a build of nsapp 2.0.0" in proc.stdout
    (repo / "metadata" / "timestamp.json").write_text("{")
    proc = su("-v", "status", "--repo", repo)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("selfupdate: error: ") and len(lines) >= 2, proc.stderr
    assert all(x.startswith("selfupdate: cause: ") for x in lines[1:]), proc.stderr
    assert "Traceback" not in proc.stderr


COMMANDS = ["init", "publish", "yank", "prune", "refresh", "rotate", "status", "build"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_an_example_per_command(command: str) -> None:
    proc = su(command, "--help")
    assert proc.returncode == 0, proc.stderr
    example = proc.stdout[proc.stdout.index("example"):]
    assert f"selfupdate {command} " in example, proc.stdout


def test_version_and_one_line_usage_errors() -> None:
    proc = su("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("selfupdate "), proc
    proc = su("rotate", "--keys", "k", "--repo", "r", "--role", "nobody")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
