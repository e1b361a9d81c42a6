"""The update and rollback flows (see :mod:`selfupdate.install` for the whole story)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from selfupdate._durable import fsync_dir
from selfupdate._shiv._seed import seed_extraction
from selfupdate.errors import InstallError, KnownBadError, TrialFailedError
from selfupdate.install._layout import Layout, dir_error, inode, no_previous_build, remove
from selfupdate.install._staging import stage_download
from selfupdate.install._state import copy_state_from, snapshot_state
from selfupdate.install._transaction import Transaction, UpdateLock, add_bad, read_bad, recover
from selfupdate.install._trial import Trial

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from selfupdate.install._staging import ClientLike

__all__ = ["Outcome", "recover_at_start", "rollback", "update"]


@dataclass
class Outcome:
    """What :func:`update` did."""

    status: str  # "up-to-date", "available" (check only), "updated"
    old: str
    new: str | None = None
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # "bad": the available one failed before


def update(
    installed: Path,
    client: ClientLike,
    current_version: str,
    state_dir: Path | None,
    *,
    check_only: bool = False,
    trial_timeout: float = 60.0,
    say: Callable[[str], None] | None = None,
) -> Outcome:
    """Update the installed file in place to the newest release; return after the commit.

    Args:
        installed: the installed ``.pyz`` (real path, not a symlink).
        client: ``UpdateClient`` (or anything with its ``check``/``download_to``).
        current_version: the running build's version.
        state_dir: the app's state directory (snapshotted, restored on failure).
        check_only: only report what is available.
        trial_timeout: seconds the trial may take.
        say: progress messages (one line each) for a terminal.

    Returns:
        The outcome. After ``"updated"`` the new build is installed; the caller decides how
        to continue in it (``selfupdate.app.update`` execs it).

    Raises:
        UpdateInProgressError: another updater holds the lock.
        KnownBadError: the newest release failed its trial before.
        TrialFailedError: the new build failed its trial; nothing was changed.
        InstallError: the directory is not writable, the disk is full, ...
        SelfUpdateError: from the client (verification, network, ...).
    """
    note = say or (lambda _msg: None)
    layout = Layout(installed, state_dir)
    if check_only:
        release = client.check(current_version)
        if release is None:
            return Outcome("up-to-date", current_version)
        bad = str(release.version) in read_bad(layout)
        return Outcome("available", current_version, release.version, extra={"bad": bad})
    with Transaction(layout, "update", current_version) as tx:
        release = client.check(current_version)
        if release is None:
            return Outcome("up-to-date", current_version)
        new = str(release.version)
        if new in read_bad(layout):
            raise KnownBadError(
                f"{new} failed its trial run before (log: {layout.log}); it is not tried "
                "again until a newer release is published",
                new,
            )
        mode = os.stat(installed).st_mode & 0o7777
        tx.journal.new = new
        tx.record("download")
        note(f"downloading {new} ...")
        staged = stage_download(layout, client, release, mode)
        try:
            tx.record("downloaded")
            tx.journal.candidate_ino = staged.ino
            tx.record("trial")
            if state_dir is not None:
                try:
                    snapshot_state(layout)
                except OSError as e:
                    raise InstallError(
                        f"cannot update {installed}: saving a copy of the state directory "
                        f"{state_dir} failed ({e.strerror or e}); nothing was changed"
                    ) from e
            tx.record("snapshot")
            try:
                seed_extraction(installed, layout.staged)
            except Exception:  # noqa: BLE001 - zipfile raises several kinds
                pass  # only an optimisation: shiv extracts the build itself in the trial
            note(f"trying {new} (migrations and health check) ...")
            failure = _run_trial(tx, layout.staged, trial_timeout)
            if failure is not None:
                try:
                    add_bad(layout, new)
                except OSError:
                    pass
                raise TrialFailedError(
                    f"the new build {new} {failure}, so it was not installed and "
                    f"{current_version} stays, with its state restored; see its log: "
                    f"{layout.log}",
                    new,
                    layout.log,
                )
            try:
                staged.wait()  # the staged file is on disk before it can be committed
            except OSError as e:
                raise dir_error(layout, e, "download") from e
        finally:
            staged.close()
        _switch(tx, layout.staged)
    tx.record("done")
    return Outcome("updated", current_version, new, layout.log)


def rollback(
    installed: Path,
    current_version: str,
    state_dir: Path | None,
    *,
    trial_timeout: float = 60.0,
) -> str:
    """Put the previous build back in place, with the state it had; same trial, same journal.

    The build rolled back from is remembered as bad (``update`` will not reinstall it; a newer
    release will be). There is no previous build after a rollback.

    Returns:
        The version now installed.

    Raises:
        NoPreviousBuildError: no previous build is kept.
        TrialFailedError: the previous build failed its health check; nothing was changed.
        UpdateInProgressError, InstallError: as for :func:`update`.
    """
    layout = Layout(installed, state_dir)
    # Checked before the lock too: with no previous build, that is the one thing to say, even
    # where the directory is not writable (the lock file could not be created).
    if not layout.previous.exists() and not layout.journal.exists():
        raise no_previous_build(installed)
    with Transaction(layout, "rollback", current_version) as tx:
        if not layout.previous.exists():
            raise no_previous_build(installed)
        try:
            prev = layout.previous_version.read_text().strip() or "previous"
        except FileNotFoundError:
            prev = "previous"
        tx.journal.new = prev
        tx.journal.candidate_ino = os.stat(layout.previous).st_ino
        tx.record("trial")
        if state_dir is not None:
            try:
                snapshot_state(layout)
                if layout.previous_state.exists():
                    copy_state_from(layout, layout.previous_state)
            except OSError as e:
                raise dir_error(layout, e, "preparing the rollback", "roll back") from e
        tx.record("snapshot")
        failure = _run_trial(tx, layout.previous, trial_timeout)
        if failure is not None:
            raise TrialFailedError(
                f"the previous build {prev} {failure}, so it was not put back and "
                f"{current_version} stays; see its log: {layout.log}",
                prev,
                layout.log,
            )
        _switch(tx, layout.previous)
    tx.record("done")
    return prev


def _run_trial(tx: Transaction, program: Path, timeout: float) -> str | None:
    """Run the trial of ``program`` through ``trial-running`` and ``trial-done``."""
    layout = tx.layout
    try:
        trial = Trial(program, tx.journal.old, tx.journal.new, layout.log)
    except OSError as e:
        raise dir_error(layout, e, "writing the trial's log", tx.action) from e
    with trial:
        tx.record("trial-running")
        failure = trial.wait(timeout)
    tx.record("trial-done")
    return failure


def _switch(tx: Transaction, candidate: Path) -> None:
    """The commit: keep the old build (update), one ``os.replace``, ``fsync``, bookkeeping."""
    layout = tx.layout
    tx.record("switch")
    try:
        if tx.journal.kind == "update":
            layout.previous_dir.mkdir(mode=0o700, exist_ok=True)
            remove(layout.previous_tmp)
            os.link(layout.installed, layout.previous_tmp)
            tx.record("linked")
        # The commit point: the installed name goes from the old file to the candidate in one
        # rename(2); it never names nothing, and never a partial file.
        os.replace(candidate, layout.installed)
        tx.record("replaced")
        fsync_dir(layout.dir)
    except OSError as e:
        raise dir_error(layout, e, "switching to the new build", tx.action) from e
    tx.record("committed")
    tx.finish()


def recover_at_start(installed: Path, state_dir: Path | None) -> bool:
    """The app-start hook: if a journal is left, finish or undo it (cheap when there is none).

    Returns:
        True when the installed file was changed (the caller should start it again).
    """
    layout = Layout(installed, state_dir)
    try:
        os.stat(layout.journal)
    except OSError:
        return False
    lock = UpdateLock(layout)
    try:
        if not lock.acquire():
            return False  # an updater is at work; it owns the journal
    except InstallError:
        return False
    try:
        before = inode(installed)
        recover(layout)
        return inode(installed) != before
    finally:
        lock.release()
