"""The publisher's command line (``python -m selfupdate``), run as a real process: key and
file permissions, refusals, status warnings, refresh and rotate, and one-sentence errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _support_audit import audited, path_arg
from _support_client import assert_sentence, make_build, make_pub

REPO = Path(__file__).resolve().parent.parent


def su(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "selfupdate", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def init(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``selfupdate init --app nsapp ARGS``."""
    return su("init", "--app", "nsapp", *args)


def assert_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("selfupdate: error: "), proc.stderr
    assert_sentence(lines[0].removeprefix("selfupdate: error: "))
    for n in needles:
        assert n in lines[0], proc.stderr


def assert_refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A refusal: exit 2 and one sentence (the caller checks that nothing was written)."""
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("selfupdate: error: "), proc.stderr
    assert_sentence(lines[0].removeprefix("selfupdate: error: "))
    for n in needles:
        assert n in lines[0], proc.stderr


def raw_publish(keys: Path, repo: Path, build: Path, version: str, channel: str = "stable") -> None:
    """Sign a small stand-in build as a release, in process, without the checks of
    ``selfupdate publish`` (which wants a real build): to set up a repository quickly."""
    from selfupdate.releases import publish

    publish.publish(keys, repo, build, version, channel=channel)


def snapshot_tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, Path]:
    keys, repo = tmp_path / "keys", tmp_path / "repo"
    proc = su("init", "--keys", keys, "--repo", repo, "--app", "nsapp")
    assert proc.returncode == 0, proc.stderr
    return keys, repo


def meta(repo: Path, name: str) -> dict[str, object]:
    data = json.loads((repo / "metadata" / name).read_bytes())
    assert isinstance(data, dict)
    signed = data["signed"]
    assert isinstance(signed, dict)
    return signed


def test_init_creates_private_keys_and_public_metadata(
    tmp_path: Path, repo: tuple[Path, Path]
) -> None:
    keys, r = repo
    assert mode(keys) == 0o700
    files = list(keys.iterdir())
    assert {f.name for f in files} >= {"root.pem", "targets.pem", "snapshot.pem", "timestamp.pem"}
    assert all(mode(f) == 0o600 for f in files)
    for name in ("root.json", "1.root.json", "1.targets.json", "1.snapshot.json", "timestamp.json"):
        assert mode(r / "metadata" / name) == 0o644, name  # servable by any web server user
    root = meta(r, "root.json")
    assert root["consistent_snapshot"] is True
    expires = datetime.fromisoformat(str(root["expires"]).replace("Z", "+00:00"))
    assert expires - datetime.now(UTC) > timedelta(days=300)
    assert not [p for p in r.rglob("*") if p.name.endswith(".tmp")]  # atomic writes left nothing
    assert not list(r.rglob("*.pem"))


def test_init_refuses_keys_inside_repo(tmp_path: Path) -> None:
    r = tmp_path / "repo"
    proc = init("--keys", r / "keys", "--repo", r)
    assert_error(proc, "inside the repository")
    assert not r.exists()


def test_init_with_the_repository_inside_the_keys_directory_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    """``init --keys K --repo K/repo`` once created the skeleton, then refused K as not empty,
    so every retry failed the same way."""
    keys = tmp_path / "keys"
    assert_error(init("--keys", keys, "--repo", keys / "repo"), "inside the keys directory")
    assert not keys.exists()
    assert_error(init("--keys", keys, "--repo", keys / "repo"), "inside the keys directory")
    assert init("--keys", keys, "--repo", tmp_path / "repo").returncode == 0


def test_init_refusing_a_used_keys_directory_creates_no_repository(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "notes.txt").write_text("mine")
    assert_error(init("--keys", keys, "--repo", tmp_path / "a" / "repo"), "not empty")
    assert not (tmp_path / "a").exists()
    assert [p.name for p in keys.iterdir()] == ["notes.txt"]


def test_init_requires_an_app_name(tmp_path: Path) -> None:
    """No default app name: a repository is for the app its update client names."""
    proc = su("init", "--keys", tmp_path / "keys", "--repo", tmp_path / "repo")
    assert proc.returncode == 2
    assert "the following arguments are required: --app" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "keys").exists() and not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["publish", "BUILD", "--version", "2.0.0"],
        ["refresh"],
        ["rotate", "--role", "timestamp"],
    ],
)
def test_signing_commands_refuse_keys_inside_the_repository(
    tmp_path: Path, repo: tuple[Path, Path], command: list[str]
) -> None:
    """The repository is published as is: keys moved into it are refused, nothing signed."""
    keys, r = repo
    inside = r / "keys"
    keys.rename(inside)
    before = snapshot_tree(r)
    build = make_build(tmp_path / "nsapp.pyz", "2.0.0")
    args = [str(build) if a == "BUILD" else a for a in command]
    proc = su(args[0], "--keys", inside, "--repo", r, *args[1:])
    assert_error(proc, "inside the repository")
    assert snapshot_tree(r) == before


def test_init_refuses_an_existing_repository_or_keys(
    tmp_path: Path, repo: tuple[Path, Path]
) -> None:
    keys, r = repo
    assert_error(init("--keys", tmp_path / "k2", "--repo", r), "already holds a repository")
    assert_error(init("--keys", keys, "--repo", tmp_path / "r2"), "not empty")


def test_init_expiry_override(tmp_path: Path) -> None:
    keys, r = tmp_path / "k", tmp_path / "r"
    proc = init("--keys", keys, "--repo", r, "--expires", "timestamp=2")
    assert proc.returncode == 0, proc.stderr
    exp = datetime.fromisoformat(str(meta(r, "timestamp.json")["expires"]).replace("Z", "+00:00"))
    assert timedelta(days=1) < exp - datetime.now(UTC) <= timedelta(days=2)
    assert (
        su(
            "init", "--app", "a", "--keys", tmp_path / "k3", "--repo", tmp_path / "r3",
            "--expires", "bogus=1",
        ).returncode
        == 2
    )


def test_publish_rejects_bad_input_in_one_sentence(tmp_path: Path, repo: tuple[Path, Path]) -> None:
    keys, r = repo
    build = make_build(tmp_path / "b.pyz", "1")
    assert_error(su("publish", "--keys", keys, "--repo", r, build, "--version", "one"), "PEP 440")
    assert_error(su("publish", "--keys", keys, "--repo", r, tmp_path / "nope", "--version", "1"))
    assert_error(
        su("publish", "--keys", keys, "--repo", r, build, "--version", "1", "--channel", "a b")
    )
    assert_error(
        su("publish", "--keys", keys, "--repo", tmp_path / "empty", build, "--version", "1"),
        "selfupdate init",
    )


def test_loose_key_permissions_are_refused(tmp_path: Path, repo: tuple[Path, Path]) -> None:
    keys, r = repo
    build = make_build(tmp_path / "b.pyz", "1")
    os.chmod(keys, 0o755)
    assert_error(su("publish", "--keys", keys, "--repo", r, build, "--version", "1"), "chmod")
    os.chmod(keys, 0o700)
    os.chmod(keys / "targets.pem", 0o644)
    assert_error(su("publish", "--keys", keys, "--repo", r, build, "--version", "1"), "chmod")


def test_keys_of_another_repository_are_refused(tmp_path: Path, repo: tuple[Path, Path]) -> None:
    _, r = repo
    other = tmp_path / "other-keys"
    assert init("--keys", other, "--repo", tmp_path / "other-repo").returncode == 0
    build = make_build(tmp_path / "b.pyz", "1")
    assert_error(
        su("publish", "--keys", other, "--repo", r, build, "--version", "1"), "not one the"
    )


def test_refresh_resigns_snapshot_and_timestamp_only(repo: tuple[Path, Path]) -> None:
    keys, r = repo
    before_ts = meta(r, "timestamp.json")
    proc = su("refresh", "--keys", keys, "--repo", r)
    assert proc.returncode == 0, proc.stderr
    ts = meta(r, "timestamp.json")
    assert ts["version"] == before_ts["version"] + 1  # type: ignore[operator]
    snap = meta(r, "2.snapshot.json")
    assert snap["meta"] == {
        "targets.json": meta(r, "1.snapshot.json")["meta"]["targets.json"]  # type: ignore[index]
    }
    assert not (r / "metadata" / "2.targets.json").exists()


def test_rotate_root_is_signed_by_old_and_new_key(repo: tuple[Path, Path]) -> None:
    keys, r = repo
    old_root = meta(r, "1.root.json")
    old_keyid = old_root["roles"]["root"]["keyids"][0]  # type: ignore[index]
    proc = su("rotate", "--keys", keys, "--repo", r, "--role", "root")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((r / "metadata" / "2.root.json").read_bytes())
    new_keyid = doc["signed"]["roles"]["root"]["keyids"][0]
    assert new_keyid != old_keyid
    assert {s["keyid"] for s in doc["signatures"]} == {old_keyid, new_keyid}
    assert (r / "metadata" / "root.json").read_bytes() == (
        r / "metadata" / "2.root.json"
    ).read_bytes()
    retired = list((keys / "retired").iterdir())
    assert len(retired) == 1 and mode(retired[0]) == 0o600
    assert mode(keys / "root.pem") == 0o600 and mode(keys) == 0o700
    # The rotated keys keep working.
    assert su("refresh", "--keys", keys, "--repo", r).returncode == 0
    assert su("rotate", "--keys", keys, "--repo", r, "--role", "root").returncode == 0


def test_rotate_targets_resigns_the_chain(repo: tuple[Path, Path]) -> None:
    keys, r = repo
    proc = su("rotate", "--keys", keys, "--repo", r, "--role", "targets")
    assert proc.returncode == 0, proc.stderr
    root = meta(r, "2.root.json")
    new_id = root["roles"]["targets"]["keyids"][0]  # type: ignore[index]
    doc = json.loads((r / "metadata" / "2.targets.json").read_bytes())
    assert [s["keyid"] for s in doc["signatures"]] == [new_id]
    assert meta(r, "timestamp.json")["version"] == 2


def test_status_lists_roles_releases_and_warns(tmp_path: Path) -> None:
    keys, r = tmp_path / "k", tmp_path / "r"
    assert init("--keys", keys, "--repo", r, "--expires", "timestamp=3").returncode == 0
    build = make_build(tmp_path / "b.pyz", "1")
    for v, ch in (("1.0", "stable"), ("1.1", "stable"), ("2.0b1", "beta")):
        raw_publish(keys, r, build, v, ch)
    proc = su("status", "--repo", r)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for role in ("root", "targets", "snapshot", "timestamp"):
        assert role in out
    assert "nsapp stable: 1.0, 1.1 (newest 1.1)" in out
    assert "nsapp beta: 2.0b1 (newest 2.0b1)" in out
    assert "warning: timestamp expires on" in proc.stderr and "selfupdate refresh" in proc.stderr
    assert "snapshot" not in proc.stderr  # 30 days: no warning
    assert su("status", "--repo", r, "--check").returncode == 1
    assert_error(su("status", "--repo", tmp_path / "missing"), "not a selfupdate repository")


def test_status_is_quiet_when_all_is_well(repo: tuple[Path, Path]) -> None:
    _, r = repo
    proc = su("status", "--repo", r, "--check")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "no releases" in proc.stdout


def test_usage_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    proc = su("publish", "--repo", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_console_script_entry_point() -> None:
    from selfupdate.releases.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["--help"])
    assert ei.value.code == 0


def test_init_with_a_file_as_repo_leaves_no_keys_behind(tmp_path: Path) -> None:
    keys, not_a_dir = tmp_path / "keys", tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    assert_error(init("--keys", keys, "--repo", not_a_dir), "cannot create the repository")
    assert not keys.exists()  # else a second init refuses the keys directory as not empty
    assert not_a_dir.read_bytes() == b"x"
    assert init("--keys", keys, "--repo", tmp_path / "repo").returncode == 0


@pytest.mark.skipif(
    subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode != 0,
    reason="no unprivileged user+mount namespaces here (needed for a private full tmpfs)",
)
def test_init_on_a_full_disk_removes_its_keys_and_can_be_run_again(tmp_path: Path) -> None:
    keys, full = tmp_path / "keys", tmp_path / "full"
    full.mkdir()
    # A one-page tmpfs: the directories fit, the second metadata file does not.
    shell = (
        f"mount -t tmpfs -o size=4k tmpfs {full} && "
        f"PYTHONPATH={REPO} {sys.executable} -m selfupdate init --app nsapp --keys {keys} "
        f"--repo {full}/r; rc=$?; echo \"left:$(ls -A {full})\"; exit $rc"
    )
    proc = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", shell], capture_output=True, text=True, timeout=120
    )
    assert_error(proc, "No space left", "free some space")
    assert not keys.exists()
    assert proc.stdout.strip() == "left:", proc.stdout  # nor a half-written repository
    assert init("--keys", keys, "--repo", tmp_path / "repo").returncode == 0


@pytest.mark.parametrize("role", ["targets", "timestamp"])
def test_publish_with_a_corrupted_key_says_so_and_writes_nothing(
    tmp_path: Path, repo: tuple[Path, Path], role: str
) -> None:
    keys, r = repo
    (keys / f"{role}.pem").write_bytes(b"garbage\n")
    before = snapshot_tree(r)
    build = make_build(tmp_path / "app.pyz", "2.0.0")
    assert_error(
        su("publish", "--keys", keys, "--repo", r, build, "--version", "2.0.0"),
        f"{role}.pem is not a valid",
        "restore it",
    )
    assert snapshot_tree(r) == before  # no orphan target file either


def test_unreadable_metadata_is_not_called_corrupt(tmp_path: Path, repo: tuple[Path, Path]) -> None:
    _, r = repo
    (r / "metadata" / "timestamp.json").unlink()
    (r / "metadata" / "timestamp.json").mkdir()  # unreadable as a file, also as root
    proc = su("status", "--repo", r)
    assert_error(proc, "timestamp.json")
    assert "restore" not in proc.stderr and "not valid" not in proc.stderr


def _names_missing(repo: Path, data: bytes) -> list[str]:
    """What the metadata ``data`` names that is not in ``repo`` yet (a client that read it now
    would fetch a file that is not there)."""
    signed = json.loads(data)["signed"]
    meta, wanted = repo / "metadata", []
    if signed["_type"] == "timestamp":
        wanted.append(meta / f"{signed['meta']['snapshot.json']['version']}.snapshot.json")
    elif signed["_type"] == "snapshot":
        wanted += [meta / f"{info['version']}.{name}" for name, info in signed["meta"].items()]
    elif signed["_type"] == "targets":
        for path, tf in signed["targets"].items():
            d, _, name = path.rpartition("/")
            wanted.append(repo / "targets" / d / f"{tf['hashes']['sha256']}.{name}")
    return [str(p.relative_to(repo)) for p in wanted if not p.exists()]


def _named_now(repo: Path) -> set[str]:
    """Every build file the published metadata (timestamp -> snapshot -> targets) leads to."""
    meta = repo / "metadata"
    ts = json.loads((meta / "timestamp.json").read_bytes())["signed"]
    snap_v = ts["meta"]["snapshot.json"]["version"]
    snap = json.loads((meta / f"{snap_v}.snapshot.json").read_bytes())["signed"]
    tg_v = snap["meta"]["targets.json"]["version"]
    targets = json.loads((meta / f"{tg_v}.targets.json").read_bytes())["signed"]["targets"]
    named = set()
    for path, tf in targets.items():
        d, _, name = path.rpartition("/")
        named.add(str(repo / "targets" / d / f"{tf['hashes']['sha256']}.{name}"))
    return named


def test_no_metadata_is_published_before_what_it_names(tmp_path: Path) -> None:
    """At the instant each metadata file takes its public name (the rename of an atomic write,
    seen by an audit hook), every file it names is already there: a publish, refresh, rotate,
    yank or prune killed or failing at any point never leaves a timestamp naming a missing
    snapshot, nor a snapshot naming missing targets metadata, nor targets naming a missing
    build. And prune deletes a build only once the published timestamp no longer leads to it."""
    from selfupdate.releases import publish

    pub = make_pub(tmp_path)
    meta_dir = str(pub.repo / "metadata")
    renamed: list[str] = []
    early: list[tuple[str, list[str]]] = []
    removed: list[str] = []
    removed_early: list[str] = []

    def watch(event: str, args: tuple[object, ...]) -> None:
        if event == "os.remove":
            gone = path_arg(args[0])
            if gone and gone.startswith(str(pub.repo / "targets")):
                removed.append(gone)
                if gone in _named_now(pub.repo):
                    removed_early.append(gone)
            return
        src, dst = (path_arg(a) for a in args[:2]) if event == "os.rename" else (None, None)
        if src is None or dst is None or os.path.dirname(dst) != meta_dir:
            return
        renamed.append(os.path.basename(dst))
        missing = _names_missing(pub.repo, Path(src).read_bytes())
        if missing:
            early.append((os.path.basename(dst), missing))

    with audited(watch):
        pub.publish("1.0.0")
        pub.publish("2.0.0", channel="beta")
        publish.refresh(pub.keys, pub.repo)
        for role in ("targets", "snapshot", "timestamp", "root"):
            publish.rotate(pub.keys, pub.repo, role)
        pub.publish("1.1.0")
        pub.publish("1.2.0")
        assert [w.version for w in publish.yank(pub.keys, pub.repo, "nsapp", "1.1.0")] == ["1.1.0"]
        assert len(publish.prune(pub.keys, pub.repo, 1)) == 2  # 1.0.0 and the withdrawn 1.1.0
    assert renamed.count("timestamp.json") == 10 and early == [], (renamed, early)
    # (Deltas not smaller than their build are written to a temporary file, then dropped.)
    removed = [r for r in removed if not os.path.basename(r).startswith(".delta.")]
    assert len(removed) == 2 and removed_early == [], (removed, removed_early)
