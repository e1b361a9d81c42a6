"""selfupdate.install on small script "builds": the flow, its failures, recovery and rollback.

The builds here are tiny Python scripts (``_support_install``) that register ``post-update``
through ``reexec_core`` (a real trial child), served by an in-memory client. The real ``.pyz``
builds, real TUF repository and real HTTP server are in ``test_update_e2e.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _support_audit import audited, path_arg
from _support_client import assert_sentence
from _support_install import FakeClient, env_fixture, run_app, script, tree  # noqa: F401

from selfupdate import install
from selfupdate.errors import SelfUpdateError

J = install.Journal


def test_plan_recovery_before_commit_undoes() -> None:
    assert install.plan_recovery(None, 1) == "none"
    assert install.plan_recovery(J(phase="download"), 1) == "undo"
    assert install.plan_recovery(J(phase="trial", candidate_ino=1), 1) == "undo"
    assert install.plan_recovery(J(phase="snapshot", candidate_ino=1), 1) == "undo"
    assert install.plan_recovery(J(phase="switch", candidate_ino=7), 1) == "undo"
    assert install.plan_recovery(J(phase="switch"), None) == "undo"
    assert install.plan_recovery(J(phase="unknown"), 1) == "undo"


def test_plan_recovery_after_commit_finishes() -> None:
    assert install.plan_recovery(J(phase="switch", candidate_ino=7), 7) == "finish"
    assert install.plan_recovery(J(phase="committed", candidate_ino=7), 7) == "finish"


def test_a_torn_or_foreign_journal_is_undone() -> None:
    assert J.from_bytes(b"{not json").phase == "unknown"
    assert J.from_bytes(b"[1, 2]").phase == "unknown"
    assert J.from_bytes(b'{"phase": "switch", "candidate_ino": 3, "extra": 1}') == J(
        phase="switch", candidate_ino=3
    )


def test_phases_are_entered_in_failpoint_order(env: tuple[Path, Path]) -> None:
    app, _ = env
    tx = install.Transaction(install.Layout(app), "update", "1.0")
    tx.record("locked")
    tx.record("snapshot")  # phases may be skipped (a rollback skips the download) ...
    with pytest.raises(RuntimeError, match="after 'snapshot'"):
        tx.record("download")  # ... but never entered out of order
    with pytest.raises(RuntimeError, match="unknown phase"):
        tx.record("halfway")


def test_restore_steps_are_idempotent_from_any_point() -> None:
    steps = install.restore_steps
    # live entries a, b; the snapshot holds a, c
    assert steps("state", False, ["b", "a"], ["c", "a"]) == [
        ("discard", "a"), ("discard", "b"), ("mark", ""), ("restore", "a"), ("restore", "c"),
        ("drop", ""),
    ]
    # killed after discarding a: b is still live, nothing was marked
    assert steps("state", False, ["b"], ["a", "c"]) == [
        ("discard", "b"), ("mark", ""), ("restore", "a"), ("restore", "c"), ("drop", ""),
    ]
    # killed after the mark and one restore: what is live now came from the snapshot, it stays
    assert steps("state", True, ["a"], ["c"]) == [("restore", "c"), ("drop", "")]
    # killed after the last restore (or in the drop: the snapshot is renamed away first)
    assert steps("state", True, ["a", "c"], []) == [("drop", "")]
    assert steps(None, False, ["a", "c"], []) == [("drop", "")]
    # there was no state directory: everything live goes, then the directory itself
    assert steps("absent", False, ["x"], []) == [
        ("discard", "x"), ("mark", ""), ("drop", ""), ("remove-state-dir", ""),
    ]
    assert steps("absent", True, [], []) == [("drop", ""), ("remove-state-dir", "")]


def test_update_installs_keeps_previous_and_migrates(env: tuple[Path, Path]) -> None:
    app, state = env
    v1 = app.read_bytes()
    client = FakeClient("2.0", script("2.0"))
    out = install.update(app, client, "1.0", state)
    assert out.status == "updated" and out.new == "2.0"
    assert run_app(app) == "2.0"
    assert oct(app.stat().st_mode & 0o777) == "0o755"
    layout = install.Layout(app, state)
    assert layout.previous.read_bytes() == v1
    assert layout.previous_version.read_text() == "1.0"
    assert (state / "data").read_text() == "v1 data\nmigrated 1.0->2.0\n"
    assert tree(layout.previous_state / "state") == {"data": b"v1 data\n"}
    assert not layout.journal.exists() and not layout.staging.exists()
    assert "migration ok" in layout.log.read_text()


def test_update_up_to_date_touches_nothing(env: tuple[Path, Path]) -> None:
    app, state = env
    out = install.update(app, FakeClient("1.0", b"x"), "1.0", state)
    assert out.status == "up-to-date"
    assert sorted(p.name for p in app.parent.iterdir()) == [".app.py.lock", "app.py"]


def test_a_refused_trial_leaves_old_build_and_state_and_is_remembered(
    env: tuple[Path, Path],
) -> None:
    """The build's own migration failed (status TRIAL_REFUSED): the one verdict on it."""
    app, state = env
    v1, s1 = app.read_bytes(), tree(state)
    client = FakeClient("2.0", script("2.0", "refuse"))
    with pytest.raises(install.TrialFailedError) as ei:
        install.update(app, client, "1.0", state)
    assert not isinstance(ei.value, install.TrialIncompleteError)
    assert_sentence(str(ei.value))
    assert str(install.Layout(app).log) in str(ei.value)
    assert "failed its migration and health check" in str(ei.value)
    assert app.read_bytes() == v1 and tree(state) == s1
    bad = install.read_bad(install.Layout(app))
    assert list(bad) == ["2.0"] and bad["2.0"].reason == "failed"
    # remembered as bad: not downloaded again
    with pytest.raises(install.KnownBadError):
        install.update(app, client, "1.0", state)
    assert client.downloads == 1
    # a newer release is tried
    install.update(app, FakeClient("2.1", script("2.1")), "1.0", state)
    assert run_app(app) == "2.1"


@pytest.mark.parametrize("behaviour", ["exit", "raise", "hang"])
def test_a_trial_that_could_not_finish_is_no_verdict(
    env: tuple[Path, Path], behaviour: str
) -> None:
    """Killed, timed out, crashed before its own verdict: said as what it is, and retried."""
    app, state = env
    v1, s1 = app.read_bytes(), tree(state)
    client = FakeClient("2.0", script("2.0", behaviour))
    with pytest.raises(install.TrialIncompleteError) as ei:
        install.update(app, client, "1.0", state, trial_timeout=2)
    msg = str(ei.value)
    assert_sentence(msg)
    assert str(install.Layout(app).log) in msg and "tries it again" in msg
    if behaviour == "hang":
        assert "within 2 seconds" in msg
    assert app.read_bytes() == v1 and tree(state) == s1
    assert not install.read_bad(install.Layout(app))
    # tried again at the next update
    with pytest.raises(install.TrialIncompleteError):
        install.update(app, client, "1.0", state, trial_timeout=2)
    assert client.downloads == 2


def test_failed_download_is_no_verdict(env: tuple[Path, Path]) -> None:
    app, state = env
    v1 = app.read_bytes()

    class Tampered(SelfUpdateError):
        pass

    with pytest.raises(Tampered):
        install.update(app, FakeClient("2.0", script("2.0"), Tampered("bad hash")), "1.0", state)
    assert app.read_bytes() == v1
    assert not install.read_bad(install.Layout(app))
    assert not install.Layout(app).staging.exists()


def test_second_updater_is_told_an_update_is_in_progress(env: tuple[Path, Path]) -> None:
    app, state = env
    with install.UpdateLock(install.Layout(app)):
        with pytest.raises(install.UpdateInProgressError, match="another update"):
            install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)


def test_lock_of_a_killed_process_is_no_obstacle(env: tuple[Path, Path]) -> None:
    app, state = env
    code = (
        "import fcntl,os,sys;fd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT);"
        "fcntl.flock(fd,fcntl.LOCK_EX);print('locked',flush=True);os.kill(os.getpid(),9)"
    )
    subprocess.run([sys.executable, "-c", code, str(install.Layout(app).lock)],
                   capture_output=True)
    install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    assert run_app(app) == "2.0"


def test_rollback_restores_previous_build_and_state(env: tuple[Path, Path]) -> None:
    app, state = env
    v1, s1 = app.read_bytes(), tree(state)
    install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    assert tree(state) != s1
    assert install.rollback(app, "2.0", state) == "1.0"
    assert app.read_bytes() == v1 and tree(state) == s1
    held = install.read_bad(install.Layout(app))
    assert list(held) == ["2.0"] and held["2.0"].reason == "held"  # no verdict: held
    with pytest.raises(install.NoPreviousBuildError):
        install.rollback(app, "1.0", state)


@pytest.mark.parametrize(
    "phase",
    ["download", "trial", "switch-before", "switch-after", "committed"],
)
def test_recovery_after_a_kill_in_each_phase(env: tuple[Path, Path], phase: str) -> None:
    """Re-create what a kill leaves in each phase; recovery gives exactly old or new."""
    app, state = env
    layout = install.Layout(app, state)
    v1, s1 = app.read_bytes(), tree(state)
    new = script("2.0")
    layout.staging.mkdir()
    layout.staged.write_bytes(new)
    ino = layout.staged.stat().st_ino
    j = dict(kind="update", old="1.0", new="2.0", state_dir=str(state), candidate_ino=ino)

    def write_journal(phase: str) -> None:
        layout.journal.write_bytes(install.Journal(phase=phase, **j).to_bytes())  # type: ignore

    if phase == "download":
        write_journal("download")
    else:
        write_journal("trial")
        install.snapshot_state(layout)
        (state / "data").write_text("half-migr")  # the trial was killed mid-migration
        (state / "extra").write_text("new file")
    if phase.startswith("switch") or phase == "committed":
        write_journal("switch")
        layout.previous_dir.mkdir()
        os.link(app, layout.previous_tmp)
    if phase in ("switch-after", "committed"):
        os.replace(layout.staged, app)
        (state / "data").write_text("v2 data\n")
        (state / "extra").unlink()
    if phase == "committed":
        write_journal("committed")
    changed = install.recover_at_start(app, None)
    assert not layout.journal.exists() and not layout.staging.exists()
    if phase in ("switch-after", "committed"):
        assert app.read_bytes() == new and (state / "data").read_text() == "v2 data\n"
        assert layout.previous.read_bytes() == v1
        assert tree(layout.previous_state / "state") == s1
    else:
        assert app.read_bytes() == v1 and tree(state) == s1 and not changed
        assert not layout.previous_tmp.exists()
    assert not install.read_bad(layout)


def test_read_only_directory_is_a_clear_error(env: tuple[Path, Path]) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes to a mode-0555 directory anyway (the e2e test uses a ro mount)")
    app, state = env
    v1 = app.read_bytes()
    app.parent.chmod(0o555)
    try:
        with pytest.raises(install.InstallError, match="not writable"):
            install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    finally:
        app.parent.chmod(0o755)
    assert app.read_bytes() == v1


def test_rollback_in_a_read_only_directory_says_what_is_wrong(env: tuple[Path, Path]) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes to a mode-0555 directory anyway (the e2e test uses a ro mount)")
    app, state = env
    install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    v2 = app.read_bytes()
    app.parent.chmod(0o555)
    try:
        with pytest.raises(install.InstallError, match="^cannot roll back .* not writable"):
            install.rollback(app, "2.0", state)
    finally:
        app.parent.chmod(0o755)
    assert app.read_bytes() == v2


def test_rollback_without_a_previous_build_says_so_before_locking(
    env: tuple[Path, Path],
) -> None:
    app, state = env
    with pytest.raises(install.NoPreviousBuildError, match="no previous build"):
        install.rollback(app, "1.0", state)
    # Nothing was created beside the installed file (a read-only directory gets this message
    # too, not a complaint about the lock file).
    assert not install.Layout(app).lock.exists()


def test_journal_is_json_with_a_format_and_every_field(env: tuple[Path, Path]) -> None:
    app, state = env
    layout = install.Layout(app, state)
    tx = install.Transaction(layout, "update", "1.0")
    tx.record("locked")
    assert not layout.journal.exists()  # not a journaled phase
    tx.journal.new = "2.0"
    tx.record("download")
    assert json.loads(layout.journal.read_text()) == {
        "format": 1, "phase": "download", "kind": "update", "old": "1.0", "new": "2.0",
        "state_dir": str(state), "candidate_ino": None,
    }


def test_restore_keeps_the_metadata_cache(env: tuple[Path, Path]) -> None:
    """The TUF metadata cache is not state: a restore must not roll it back or drop it."""
    app, state = env
    (state / "tuf-cache").mkdir()
    (state / "tuf-cache" / "timestamp.json").write_text("version 7")
    with pytest.raises(install.TrialFailedError):
        install.update(app, FakeClient("2.0", script("2.0", "raise")), "1.0", state)
    assert (state / "tuf-cache" / "timestamp.json").read_text() == "version 7"
    assert (state / "data").read_text() == "v1 data\n"


# --------------------------------------------------------------------------------------------
# Audit hooks (PEP 578) see every file operation of the flow in this process, deterministically


@pytest.mark.parametrize("planted", ["symlink", "hardlink"])
def test_a_file_planted_at_the_staged_path_is_not_followed_nor_written(
    env: tuple[Path, Path], tmp_path: Path, planted: str
) -> None:
    """Someone creates the staged name between our mkdir and our open (a symlink to a file of
    theirs, or a hard link to it): the download never writes through it, the update is refused
    in one sentence, the planted name is removed, the installed program and state untouched."""
    app, state = env
    v1, s1 = app.read_bytes(), tree(state)
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours to overwrite")
    staged = str(install.Layout(app).staged)
    done: list[str] = []

    def plant(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and not done and path_arg(args[0]) == staged:
            done.append(event)
            if planted == "symlink":
                os.symlink(victim, staged)
            else:
                os.link(victim, staged)

    with audited(plant), pytest.raises(install.InstallError) as ei:
        install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    assert done, "the staged file was never opened"
    assert_sentence(str(ei.value))
    assert "creating the download file" in str(ei.value)
    assert victim.read_bytes() == b"not yours to overwrite" and not victim.is_symlink()
    assert app.read_bytes() == v1 and tree(state) == s1
    layout = install.Layout(app)
    assert not os.path.lexists(layout.staging) and not layout.journal.exists()
    assert not install.read_bad(layout)  # no verdict on the build
    install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)  # next time it works
    assert run_app(app) == "2.0"


def test_a_symlink_left_at_the_staged_path_is_removed_not_followed(
    env: tuple[Path, Path], tmp_path: Path
) -> None:
    """A leftover staging directory (or one planted before the update) is replaced afresh."""
    app, state = env
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    layout = install.Layout(app)
    layout.staging.mkdir()
    layout.staged.symlink_to(victim)
    install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    assert run_app(app) == "2.0"
    assert victim.read_bytes() == b"keep"


def test_the_installed_name_always_names_a_whole_build(env: tuple[Path, Path]) -> None:
    """At every rename, unlink, link or removal of the update and of the rollback, the
    installed path exists and is the old or the new build, never absent or partial: the
    switch is one rename(2), not an unlink followed by a rename."""
    app, state = env
    v1, v2 = app.read_bytes(), script("2.0")
    seen: list[tuple[str, bytes | None]] = []
    watched = {"os.rename", "os.remove", "os.link", "os.rmdir", "os.truncate", "shutil.rmtree",
               "shutil.move"}

    def watch(event: str, args: tuple[Any, ...]) -> None:
        if event in watched:
            try:
                seen.append((event, app.read_bytes()))
            except FileNotFoundError:
                seen.append((event, None))

    with audited(watch):
        install.update(app, FakeClient("2.0", v2), "1.0", state)
        assert app.read_bytes() == v2
        install.rollback(app, "2.0", state)
    assert app.read_bytes() == v1
    events = {e for e, _ in seen}
    assert {"os.rename", "os.link", "os.remove"} <= events, events  # the hook saw the switch
    bad = [(e, None if c is None else c[:20]) for e, c in seen if c not in (v1, v2)]
    assert not bad, f"the installed name was absent or partial at: {bad}"


def test_the_log_tail_quoted_in_a_message_keeps_what_went_wrong_not_traceback_frames(
    tmp_path: Path,
) -> None:
    from selfupdate.install._trial import log_tail

    log = tmp_path / "trial.log"
    frames = "".join(f'  File "{tmp_path}/{"x" * 80}/m{i}.py", line {i}, in f\n    f()\n'
                     for i in range(5))  # fmt: skip
    log.write_text(
        "# app post-update 1.0 2.0\npost-update 1.0 -> 2.0\nTraceback (most recent call last):\n"
        f"{frames}RuntimeError: the state is from the future\n"
    )
    tail = log_tail(log)
    assert tail == "post-update 1.0 -> 2.0 | RuntimeError: the state is from the future", tail
    log.write_text("# header\n" + "".join(f"line {i} {'y' * 150}\n" for i in range(10)))
    assert len(log_tail(log)) <= 200 and log_tail(log).endswith("y")
