"""Issue 9, findings 4, 5 and 7: whose files the installer trusts, and whose locks it waits for.

Two users where the finding is about users: in the root pass the second user is ``nobody``,
acting through ``setpriv`` in a directory it may write (a sticky world-writable one, like
``/tmp``, holding root's install); in the unprivileged pass those variants are skipped ("needs
root to act as a second user") and the single-user ones (a FIFO journal, a symlinked log, the
modes of what the installer creates) run as ``nobody`` itself.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support_client import assert_sentence
from _support_install import FakeClient, env_fixture, run_app, script, tree  # noqa: F401
from _support_users import AS_NOBODY, NOBODY, as_nobody, second_user, tmp_dir

from selfupdate import install


@pytest.fixture
def sticky(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Root's install of a script build in a sticky world-writable directory (mode 1777)."""
    with tmp_dir("su-shared-", 0o1777) as d:
        app = d / "app.py"
        app.write_bytes(script("1.0"))
        app.chmod(0o755)
        state = tmp_path / "state"
        state.mkdir()
        (state / "data").write_text("v1 data\n")
        monkeypatch.setenv("TEST_STATE_DIR", str(state))
        yield app, state


def _refused_for_the_directory(e: BaseException, d: Path) -> None:
    msg = str(e)
    assert_sentence(msg)
    assert str(d) in msg and "other users" in msg, msg


# --------------------------------------------------------------------------------------------
# Finding 4: side files in a directory others can write


@second_user
def test_root_does_not_write_through_a_log_symlink_another_user_planted(
    sticky: tuple[Path, Path], tmp_path: Path
) -> None:
    app, state = sticky
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's secret")
    victim.chmod(0o600)
    as_nobody("ln", "-s", str(victim), str(app.parent / ".app.py.post-update.log"))
    with pytest.raises(install.InstallError) as ei:
        install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    _refused_for_the_directory(ei.value, app.parent)
    assert victim.read_bytes() == b"root's secret"
    assert app.read_bytes() == script("1.0")


@second_user
def test_a_bad_list_another_user_planted_does_not_freeze_updates_silently(
    sticky: tuple[Path, Path],
) -> None:
    app, state = sticky
    bad = app.parent / ".app.py.bad"
    as_nobody("sh", "-c", f"echo '[\"2.0\"]' > '{bad}'")
    with pytest.raises(install.InstallError) as ei:
        install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    assert not isinstance(ei.value, install.KnownBadError), "the planted list was believed"
    _refused_for_the_directory(ei.value, app.parent)


@second_user
def test_root_never_runs_nor_installs_a_previous_build_another_user_planted(
    sticky: tuple[Path, Path], tmp_path: Path
) -> None:
    app, state = sticky
    marker = app.parent / "ran-as-root"
    theirs = app.parent / ".app.py.previous"
    as_nobody("mkdir", str(theirs))
    evil = f"import os\nif os.geteuid() == 0: open({str(marker)!r}, 'w')\n"
    as_nobody("sh", "-c", f"cat > '{theirs}/app.py' <<'EOF'\n{evil}EOF\n")
    with pytest.raises(install.InstallError) as ei:
        install.rollback(app, "1.0", state)
    _refused_for_the_directory(ei.value, app.parent)
    assert not marker.exists() and app.read_bytes() == script("1.0")


@second_user
def test_a_forged_journal_does_not_make_the_start_hook_delete_or_rename(
    sticky: tuple[Path, Path], tmp_path: Path
) -> None:
    app, state = sticky
    layout = install.Layout(app, state)
    layout.previous_dir.mkdir(mode=0o700)  # root's own previous build, from an earlier update
    shutil.copy(app, layout.previous)
    victim = tmp_path / "victim"  # any directory of root's the journal names
    (victim / ".state.previous").mkdir(parents=True)
    (victim / ".state.snapshot").mkdir()
    forged = {"format": 1, "phase": "committed", "kind": "rollback", "old": "1.0",
              "new": "0.9", "state_dir": str(victim / "state"), "candidate_ino": None}
    as_nobody("sh", "-c", f"echo '{json.dumps(forged)}' > '{layout.journal}'")
    notes: list[str] = []
    assert install.recover_at_start(app, state, say=notes.append) is False
    assert layout.previous.read_bytes() == script("1.0")
    assert (victim / ".state.previous").is_dir() and (victim / ".state.snapshot").is_dir()
    assert not install.read_bad(layout)
    assert len(notes) == 1 and str(app.parent) in notes[0], notes


@second_user
def test_a_journal_of_another_user_is_ignored_with_one_line(env: tuple[Path, Path]) -> None:
    """Even in a directory of ours: only a journal we (or root) own is acted on."""
    app, state = env
    layout = install.Layout(app, state)
    layout.previous_dir.mkdir(mode=0o700)
    shutil.copy(app, layout.previous)
    layout.journal.write_text(json.dumps({"format": 1, "phase": "committed",
                                          "kind": "rollback", "old": "1.0", "new": "0.9"}))
    os.chown(layout.journal, NOBODY, NOBODY)
    notes: list[str] = []
    assert install.recover_at_start(app, state, say=notes.append) is False
    assert layout.previous.exists() and layout.journal.exists()
    assert len(notes) == 1 and "belongs to user 65534" in notes[0], notes


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_journal_that_is_not_a_regular_file_never_blocks_the_start_hook(
    env: tuple[Path, Path], tmp_path: Path, kind: str
) -> None:
    """Run in a child with a time limit: a FIFO opened for reading blocks until a writer
    comes, so a hang is a TimeoutExpired here, not a hung test run."""
    app, state = env
    layout = install.Layout(app, state)
    if kind == "fifo":
        os.mkfifo(layout.journal)
    else:
        target = tmp_path / "elsewhere.json"
        target.write_text(json.dumps({"format": 1, "phase": "committed", "kind": "rollback"}))
        layout.journal.symlink_to(target)
    layout.previous_dir.mkdir(mode=0o700)
    shutil.copy(app, layout.previous)
    code = ("import sys; from pathlib import Path; from selfupdate import install; "
            "print(install.recover_at_start(Path(sys.argv[1]), Path(sys.argv[2]), "
            "say=lambda m: print(m, file=sys.stderr)))")
    r = subprocess.run([sys.executable, "-c", code, str(app), str(state)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(layout.journal) in lines[0], r.stderr
    assert ("FIFO" if kind == "fifo" else "symbolic link") in lines[0]
    assert layout.previous.exists()


def test_a_log_symlink_is_replaced_not_written_through_and_the_log_is_0600(
    env: tuple[Path, Path], tmp_path: Path
) -> None:
    app, state = env
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    victim.chmod(0o600)
    log = install.Layout(app).log
    log.symlink_to(victim)
    install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    assert run_app(app) == "2.0"
    assert victim.read_bytes() == b"keep me"
    st = os.lstat(log)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert "migration ok" in log.read_text()


def test_what_the_installer_creates_beside_the_program_is_for_its_owner_only(
    env: tuple[Path, Path],
) -> None:
    app, state = env
    with pytest.raises(install.TrialFailedError):
        install.update(app, FakeClient("2.0", script("2.0", "refuse")), "1.0", state)
    install.update(app, FakeClient("2.1", script("2.1")), "1.0", state)
    layout = install.Layout(app, state)
    for p in (layout.lock, layout.bad, layout.log, layout.previous_version):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    for p in (layout.previous_dir, layout.previous_state):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700, p


def test_a_previous_build_directory_others_may_write_is_not_used(env: tuple[Path, Path]) -> None:
    app, state = env
    layout = install.Layout(app, state)
    layout.previous_dir.mkdir()
    layout.previous.write_bytes(script("0.9"))
    layout.previous_dir.chmod(0o777)
    with pytest.raises(install.InstallError) as ei:
        install.rollback(app, "1.0", state)
    assert_sentence(str(ei.value))
    assert "may be written by other users" in str(ei.value)
    assert run_app(app) == "1.0"


# --------------------------------------------------------------------------------------------
# Finding 5: a lock other users can take


def test_the_lock_file_is_0600_even_if_an_older_version_made_it_0644(
    env: tuple[Path, Path],
) -> None:
    app, state = env
    lock = install.Layout(app).lock
    lock.touch()
    lock.chmod(0o644)
    install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600


@second_user
def test_another_user_cannot_hold_the_update_lock(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with tmp_dir("su-shared-", 0o755) as d:
        app = d / "app.py"
        app.write_bytes(script("1.0"))
        app.chmod(0o755)
        state = tmp_path / "state"
        monkeypatch.setenv("TEST_STATE_DIR", str(state))
        install.update(app, FakeClient("1.1", script("1.1")), "1.0", state)  # makes the lock
        lock = install.Layout(app).lock
        holder = subprocess.Popen(
            [*AS_NOBODY, "flock", "-x", "-n", str(lock), "-c", "echo locked; exec sleep 600"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            assert holder.stdout is not None
            got = holder.stdout.readline()  # "locked", or EOF when flock(1) was refused
            assert got == "", "another user holds the update lock"
            install.update(app, FakeClient("2.0", script("2.0")), "1.1", state)
            assert run_app(app) == "2.0"
        finally:
            holder.kill()
            holder.wait()


# --------------------------------------------------------------------------------------------
# Finding 7: interpreter isolation carried over to another build


@pytest.mark.parametrize("flags", [["-I"], ["-E", "-s", "-P"]])
def test_another_build_is_started_with_the_callers_isolation_flags(flags: list[str]) -> None:
    code = ("import reexec_core, sys; "
            "print(reexec_core.command('post-update', program=sys.argv[1]).argv[1:-1])")
    r = subprocess.run([sys.executable, *flags, "-c", code, "/x/app.pyz"],
                       capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == repr(flags), r.stdout
