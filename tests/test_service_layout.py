"""Issue 11: a service layout that works.

The state side of an update writes nothing but the install directory (the copies of the
state live in ``D/.I.state``, out of the trial's reach) and the state directory itself (a
restore renames entries in from ``S/.selfupdate``), so the documented systemd unit
(``StateDirectory=nsapp``: ``/var/lib`` is root's, ``/var/lib/nsapp`` the service user's)
updates and rolls back; a directory the update could not write is refused before any
download, naming the path and the fix; what an older version kept beside the state directory
is still used by rollback and recovery.

Real ``.pyz`` builds, a real signed repository on 127.0.0.1 (``test_update_e2e``'s fixtures,
imported), real mount namespaces (``unshare``) for the read-only parts, and for the unit as
written the real second user ``nobody`` (``setpriv``) on the system's Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support_client import assert_sentence
from _support_install import FakeClient, env_fixture, script, tree  # noqa: F401
from _support_users import NOBODY, NOBODY_PY, tmp_dir
from test_update_e2e import (  # noqa: F401 - *_fixture: the fixtures, by name
    PY,
    V1,
    V2,
    Install,
    World,
    _in_mount_ns,
    _unshare_or_skip,
    inst_fixture,
    server_fixture,
    sha,
    world_fixture,
)

from selfupdate import install


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _history(state: Path) -> dict[str, bytes]:
    """The app's state, without the installer's own directory and the caches."""
    return {k: v for k, v in tree(state).items()
            if not k.startswith((".selfupdate", "tuf-cache"))}


# --------------------------------------------------------------------------------------------
# The state directory's parent is not written (fails on the code before issue 11)


def test_update_and_rollback_need_no_write_access_above_the_state_directory(
    world: World, inst: Install
) -> None:
    """S writable, everything else around it read-only (S.parent included): the snapshot, the
    previous state and the restore all stay inside S."""
    _unshare_or_skip()
    url, repo = world.repo("parent-ro")
    world.publish(repo, world.v2, V2)
    top, state, d = inst.state.parent, inst.state, inst.pyz.parent
    before, around = _history(state), _names(top)
    # The writable places are bound first: remounting their parent read-only keeps them as
    # they are (mount flags are per mount).
    ro = (f'mount --bind "{top}" "{top}"; mount --bind "{state}" "{state}"; '
          f'mount --bind "{d}" "{d}"; mount -o remount,ro,bind "{top}" "{top}"\n'
          f'touch "{top}/probe" 2>/dev/null && exit 98\n')
    r = _in_mount_ns(ro + f'"{PY}" "{inst.pyz}" update --repo {url}', inst.env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert f"updated {V1} -> {V2}" in r.stdout
    assert inst.pyz.read_bytes() == world.v2.read_bytes()
    assert (state / "history.jsonl").exists() and not (state / "history.txt").exists()
    layout = install.Layout(inst.pyz, state)
    assert (layout.previous_state / "state" / "history.txt").exists()
    assert layout.previous_state.parent.parent == d
    r = _in_mount_ns(ro + f'"{PY}" "{inst.pyz}" rollback', inst.env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert f"rolled back {V2} -> {V1}" in r.stdout
    assert inst.pyz.read_bytes() == world.v1.read_bytes()
    assert _history(state) == before and not (state / ".selfupdate").exists()
    assert _names(top) == around  # nothing was ever made beside the state directory


# --------------------------------------------------------------------------------------------
# Checked before any download


@pytest.mark.parametrize("case", ["state-read-only", "state-missing-parent-read-only"])
def test_a_state_directory_the_update_cannot_write_is_refused_before_the_download(
    world: World, inst: Install, case: str
) -> None:
    _unshare_or_skip()
    url, repo = world.repo(f"check-{case}")
    world.publish(repo, world.v2, V2)
    ro_top = inst.state.parent / "ro"
    ro_top.mkdir()
    state = ro_top / "state"
    if case == "state-read-only":
        shutil.copytree(inst.state, state)
        expected = f"its state directory {state} is on a read-only file system"
    else:
        expected = (f"its state directory {state} does not exist and cannot be created, as "
                    f"{ro_top} is on a read-only file system; create {state}")
    before_sha, before = sha(inst.pyz), tree(state)
    env = dict(inst.env, NSAPP_STATE_DIR=str(state))
    r = _in_mount_ns(
        f'mount --bind "{ro_top}" "{ro_top}"; mount -o remount,ro,bind "{ro_top}" "{ro_top}"\n'
        f'"{PY}" "{inst.pyz}" update --repo {url} && exit 99 || echo "status $?"',
        env,
    )
    assert "status 1" in r.stdout, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr
    assert_sentence(lines[0].split(": ", 1)[1])
    assert "downloading" not in r.stdout  # refused before the download
    assert sha(inst.pyz) == before_sha and tree(state) == before
    assert not (inst.pyz.parent / ".nsapp.pyz.update").exists()


def test_a_missing_state_directory_is_created_and_absent_again_after_a_failed_trial(
    env: tuple[Path, Path],
) -> None:
    """"There was no state directory" still works: the updater does not create it (the
    snapshot says ``ABSENT``), and removes the one the trial made when it puts that back."""
    app, state = env
    shutil.rmtree(state)
    with pytest.raises(install.TrialFailedError):
        install.update(app, FakeClient("2.0", script("2.0", "refuse")), "1.0", state)
    assert not state.exists()
    install.update(app, FakeClient("2.1", script("2.1")), "1.0", state)
    assert (state / "data").read_text() == "migrated 1.0->2.1\n"
    assert (install.Layout(app, state).previous_state / "ABSENT").exists()
    assert install.rollback(app, "2.1", state) == "1.0"
    assert not state.exists()


def test_the_installers_directory_in_the_state_is_never_snapshotted_nor_discarded(
    env: tuple[Path, Path],
) -> None:
    app, state = env
    (state / "tuf-cache").mkdir()
    (state / "tuf-cache" / "root.json").write_text("{}")
    install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    layout = install.Layout(app, state)
    assert sorted(os.listdir(layout.previous_state / "state")) == ["data"]
    with pytest.raises(install.TrialFailedError):
        install.update(app, FakeClient("3.0", script("3.0", "refuse")), "2.0", state)
    # the failed trial's state is gone, the previous state and the cache are where they were
    assert (state / "data").read_text() == "v1 data\nmigrated 1.0->2.0\n"
    assert tree(layout.previous_state / "state") == {"data": b"v1 data\n"}
    assert (state / "tuf-cache" / "root.json").read_text() == "{}"


def test_a_restore_killed_at_any_step_finishes_with_the_snapshot(
    env: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed before each rename of the undo (the copy into S, moving the live entries aside,
    moving the copy's in, dropping the copy, dropping the snapshot in D), then planned again
    from what is on disk: the state is the snapshot's, nothing of the installer's is left."""
    app, state = env
    layout = install.Layout(app, state)
    real_replace = os.replace
    for stop in range(8):  # the 7 renames, then none
        shutil.rmtree(state)
        state.mkdir()
        (state / "data").write_text("v1 data\n")
        (state / "sub").mkdir()
        (state / "sub" / "f").write_text("old")
        want = tree(state)
        install.snapshot_state(layout)
        (state / "data").write_text("half-migrated")  # what a killed trial leaves
        (state / "new").write_text("made by the trial")
        shutil.rmtree(state / "sub")
        calls = [0]

        def dying_replace(a: object, b: object, stop: int = stop, calls: list[int] = calls
                          ) -> None:
            if calls[0] == stop:
                raise KeyboardInterrupt  # the kill, just before this rename
            calls[0] += 1
            real_replace(a, b)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "replace", dying_replace)
        try:
            assert install.undo_state(layout, expected=True) == "restored"
            assert stop == 7
        except KeyboardInterrupt:
            assert stop < 7
        monkeypatch.setattr(os, "replace", real_replace)
        again = install.undo_state(layout, expected=True)  # the next recovery
        assert again == ("missing" if stop == 7 else "restored"), stop
        assert tree(state) == want, stop
        assert not layout.state_private.exists(), stop
        assert not layout.saved_states.exists(), stop


def test_a_migration_that_removes_the_whole_state_directory_and_fails_is_undone(
    env: tuple[Path, Path],
) -> None:
    """The copy a failed trial is undone from is not in the directory the trial is handed
    (fails on the first layout of issue 11, which kept it in S/.selfupdate)."""
    app, state = env
    (state / "sub").mkdir()
    (state / "sub" / "f").write_text("kept")
    before, app_bytes = tree(state), app.read_bytes()
    with pytest.raises(install.TrialFailedError) as e:
        install.update(app, FakeClient("2.0", script("2.0", "wipe")), "1.0", state)
    assert "with its state restored" in str(e.value)
    assert tree(state) == before and app.read_bytes() == app_bytes
    layout = install.Layout(app, state)
    assert not layout.state_private.exists() and not layout.saved_states.exists()
    assert not layout.journal.exists()


def test_a_snapshot_removed_behind_the_updaters_back_is_said_never_claimed_restored(
    env: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, state = env
    layout = install.Layout(app, state)
    monkeypatch.setenv("TEST_SNAPSHOT", str(layout.snapshot))
    app_bytes = app.read_bytes()
    with pytest.raises(install.TrialFailedError) as e:
        install.update(app, FakeClient("2.0", script("2.0", "steal")), "1.0", state)
    msg = str(e.value)
    assert "restored" not in msg, msg
    assert f"the copy of the state taken before the trial is gone ({layout.snapshot})" in msg
    assert "the state directory is left as it was found" in msg
    assert_sentence(msg)
    assert app.read_bytes() == app_bytes  # nothing installed
    assert (state / "data").read_text() == "v1 data\nmigrated 1.0->2.0\n"  # as left


def test_a_kill_after_the_snapshot_went_missing_is_said_at_the_next_start(
    env: tuple[Path, Path],
) -> None:
    app, state = env
    layout = install.Layout(app, state)
    install.snapshot_state(layout)
    journal = install.Journal(phase="snapshot", kind="update", old="1.0", new="2.0",
                              state_dir=str(state))
    layout.journal.write_bytes(journal.to_bytes())
    shutil.rmtree(layout.snapshot)
    said: list[str] = []
    install.recover_at_start(app, state, said.append)
    assert any(f"interrupted update is gone ({layout.snapshot})" in line for line in said), said
    assert not layout.journal.exists()


def test_a_rollback_without_a_kept_state_says_so(env: tuple[Path, Path]) -> None:
    app, state = env
    install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    layout = install.Layout(app, state)
    shutil.rmtree(layout.previous_state)
    said: list[str] = []
    assert install.rollback(app, "2.0", state, say=said.append) == "1.0"
    assert any("no copy of the state from before the update to 2.0 is kept" in line
               for line in said), said


# --------------------------------------------------------------------------------------------
# What an older version kept beside the state directory


def test_a_previous_state_an_older_version_kept_beside_the_state_is_rolled_back_to(
    env: tuple[Path, Path],
) -> None:
    """The first update to this version is made by the older one, which kept the previous
    state in S.parent/.S.previous: rolling back from it must still put that state back."""
    app, state = env
    s1 = tree(state)
    install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    layout = install.Layout(app, state)
    legacy = layout.legacy_previous_state
    assert legacy == state.parent / ".state.previous"
    os.replace(layout.previous_state, legacy)  # where the older version put it
    os.rmdir(layout.saved_states)
    assert install.rollback(app, "2.0", state) == "1.0"
    assert tree(state) == s1
    assert not legacy.exists() and not layout.state_private.exists()


@pytest.mark.parametrize("where", ["beside", "inside"])
def test_an_older_versions_interrupted_update_is_undone_or_finished(
    env: tuple[Path, Path], where: str
) -> None:
    """What an older version's update left (beside the state directory, before issue 11; in
    S/.selfupdate, the first layout of issue 11): killed during the trial, it is undone; killed
    after its commit point, its snapshot becomes its previous state, and rolling back from it
    puts that back."""
    app, state = env
    layout = install.Layout(app, state)
    s1 = tree(state)
    if where == "beside":
        snap, previous = layout.legacy_snapshot, layout.legacy_previous_state
        assert snap == state.parent / ".state.snapshot"
    else:
        snap, previous = layout.inside_snapshot, layout.inside_previous_state
        assert snap == state / ".selfupdate" / "snapshot"
    shutil.copytree(state, snap / "state")
    journal = install.Journal(phase="trial", kind="update", old="1.0", new="2.0",
                              state_dir=str(state))
    layout.journal.write_bytes(journal.to_bytes())
    (state / "data").write_text("half-migrated")
    (state / "extra").write_text("made by the trial")
    install.recover_at_start(app, state)
    assert tree(state) == s1 and not snap.exists() and not layout.state_private.exists()
    shutil.copytree(state, snap / "state")
    app.write_bytes(script("2.0"))
    (state / "data").write_text("v2 data\n")
    journal.phase = "committed"
    layout.journal.write_bytes(journal.to_bytes())
    install.recover_at_start(app, state)
    assert not layout.journal.exists() and not snap.exists()
    assert tree(previous / "state") == s1
    layout.previous_dir.mkdir(mode=0o700)
    layout.previous.write_bytes(script("1.0"))
    layout.previous_version.write_text("1.0")
    assert install.rollback(app, "2.0", state) == "1.0"
    assert tree(state) == s1 and not previous.exists()
    assert not layout.state_private.exists() and not layout.saved_states.exists()


# --------------------------------------------------------------------------------------------
# The documented systemd unit, as written, as the unprivileged user


def _systemd_unit() -> str:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "update.md").read_text()
    start = doc.index("# /etc/systemd/system/nsapp.service")
    return doc[start: doc.index("```", start)]


@pytest.fixture
def service_root() -> Iterator[Path]:
    """A directory every user may traverse (the tests' own tmp_path is root's, mode 0700)."""
    with tmp_dir("su-service-", 0o755) as d:
        yield d


def _service(base: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``nsapp ARGS`` as the unit runs it: user nobody, the unit's environment, the system's
    Python, and (ProtectSystem=strict) everything read-only but the unit's writable paths."""
    writable = [base / "opt/nsapp", base / "var/lib/nsapp", base / "var/cache/nsapp"]
    read_only = [base, Path("/usr"), Path("/etc")]
    # Bound in this order: the read-only ones, the writable ones on top, then the first made
    # read-only (mount flags are per mount, so the writable ones stay writable).
    script_ = "mount --make-rprivate /\n"
    script_ += "".join(f'mount --bind "{p}" "{p}"\n' for p in read_only + writable)
    script_ += "".join(f'mount -o remount,ro,bind "{p}" "{p}"\n' for p in read_only)
    script_ += f'touch "{base}/probe" 2>/dev/null && exit 98\n'
    env = (f"PATH=/usr/bin:/bin HOME=/nonexistent LANG=C.UTF-8 "
           f"NSAPP_STATE_DIR={base}/var/lib/nsapp XDG_CACHE_HOME={base}/var/cache "
           f"SHIV_ROOT={base}/var/cache/nsapp/shiv SELFUPDATE_TRIAL_TIMEOUT=60")
    quoted = " ".join(f"'{a}'" for a in args)
    script_ += (f"exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- "
                f"env -i {env} {NOBODY_PY} {base}/opt/nsapp/nsapp.pyz {quoted}")
    return subprocess.run(["unshare", "--mount", "sh", "-euc", script_], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.skipif(os.geteuid() != 0, reason="emulating StateDirectory= (a root-owned "
                    "/var/lib) and User= needs root; this pass already runs as one user")
@pytest.mark.skipif(shutil.which("setpriv") is None or shutil.which("unshare") is None,
                    reason="needs setpriv and unshare (util-linux)")
@pytest.mark.skipif(not os.access(NOBODY_PY, os.X_OK), reason=f"needs {NOBODY_PY}")
def test_the_documented_systemd_unit_updates_and_rolls_back_as_its_user(
    world: World, service_root: Path
) -> None:
    unit = _systemd_unit()
    # The unit as documented: what this test emulates.
    for line in ("User=nsapp", "StateDirectory=nsapp", "CacheDirectory=nsapp",
                 "ProtectSystem=strict", "ReadWritePaths=/opt/nsapp",
                 "Environment=NSAPP_STATE_DIR=/var/lib/nsapp XDG_CACHE_HOME=/var/cache "
                 "SHIV_ROOT=/var/cache/nsapp/shiv",
                 "ExecStart=/usr/bin/python3 /opt/nsapp/nsapp.pyz serve --listen 127.0.0.1:8080 "
                 "--auto-update 3600"):
        assert line in unit.splitlines(), line
    r = subprocess.run([NOBODY_PY, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                       capture_output=True, text=True)
    if r.stdout.strip() != "True":
        pytest.skip(f"{NOBODY_PY} is older than the builds' Python (3.11)")
    base = service_root
    url, repo = world.repo("systemd")
    world.publish(repo, world.v2, V2)
    # What systemd makes: /var/lib and /var/cache root's (0755), StateDirectory= and
    # CacheDirectory= the service user's (0700); the install directory is the user's too.
    for d in ("var/lib", "var/cache", "opt"):
        (base / d).mkdir(parents=True, mode=0o755)
    for d in ("var/lib/nsapp", "var/cache/nsapp", "opt/nsapp"):
        (base / d).mkdir(mode=0o700 if d.startswith("var") else 0o755)
        os.chown(base / d, NOBODY, NOBODY)
    pyz = base / "opt/nsapp/nsapp.pyz"
    shutil.copy(world.v1, pyz)
    pyz.chmod(0o755)
    os.chown(pyz, NOBODY, NOBODY)
    state = base / "var/lib/nsapp"
    for event in ("first run", "second run"):
        r = _service(base, url, "history", "--add", event)
        assert r.returncode == 0, (r.stdout, r.stderr)
    before = _history(state)
    assert list(before) == ["history.txt"]

    r = _service(base, url, "update", "--repo", url)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert f"updated {V1} -> {V2}" in r.stdout
    assert pyz.read_bytes() == world.v2.read_bytes()
    assert _history(state).keys() == {"history.jsonl"}
    kept = install.Layout(pyz, state).saved_states
    assert kept.stat().st_uid == NOBODY and (kept / "previous/state/history.txt").exists()
    assert not (state / ".selfupdate").exists()
    assert _names(base / "var/lib") == ["nsapp"]  # nothing beside the state directory

    r = _service(base, url, "rollback")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert f"rolled back {V2} -> {V1}" in r.stdout
    assert pyz.read_bytes() == world.v1.read_bytes()
    assert _history(state) == before and not (state / ".selfupdate").exists()
    assert _names(base / "var/lib") == ["nsapp"]
    r = _service(base, url, "history")
    assert r.returncode == 0 and "first run" in r.stdout and "second run" in r.stdout, r

