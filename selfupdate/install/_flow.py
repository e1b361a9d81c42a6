"""The update and rollback flows (see :mod:`selfupdate.install` for the whole story)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from selfupdate._durable import fsync_dir
from selfupdate._shiv._seed import seed_extraction
from selfupdate._shiv._trust import UntrustedDirectoryError
from selfupdate.errors import (
    InstallError,
    KnownBadError,
    SelfUpdateError,
    TrialFailedError,
    TrialIncompleteError,
)
from selfupdate.install._layout import (
    Layout,
    UntrustedFile,
    check_dirs,
    dir_error,
    inode,
    no_previous_build,
    previous_build,
    read_side,
    remove,
    untrusted_dir,
)
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
    # "bad": the available one failed before; "unfinished": after the commit point the
    # bookkeeping failed (one sentence; the new build is installed, the next start finishes)
    extra: dict[str, Any] = field(default_factory=dict)


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
        TrialFailedError: the new build's migration or health check failed; nothing was
            changed, the release is remembered as bad.
        TrialIncompleteError: the trial could not finish (extraction, space, a kill, the time
            limit); nothing was changed, the release is tried again next time.
        InstallError: the directory is not writable or not trusted, the disk is full, ...
        SelfUpdateError: from the client (verification, network, ...).
    """
    note = say or (lambda _msg: None)
    layout = Layout(installed, state_dir)
    if check_only:
        release = client.check(current_version)
        if release is None:
            return Outcome("up-to-date", current_version)
        bad = str(release.version) in read_bad(layout, note)
        return Outcome("available", current_version, release.version, extra={"bad": bad})
    check_dirs(layout, "update")
    with Transaction(layout, "update", current_version) as tx:
        for line in tx.notes:
            note(line)
        release = client.check(current_version)
        if release is None:
            return Outcome("up-to-date", current_version)
        new = str(release.version)
        if new in read_bad(layout, note):
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
            except UntrustedDirectoryError as e:
                # Not the release's fault (not remembered as bad): where it would run is not ours.
                raise InstallError(f"cannot update {installed}: {e}") from e
            except Exception:  # noqa: BLE001 - zipfile raises several kinds
                pass  # only an optimisation: shiv extracts the build itself in the trial
            note(f"trying {new} (migrations and health check) ...")
            failure, refused = _run_trial(tx, layout.staged, trial_timeout)
            if failure is not None:
                stays = f"so it was not installed and {current_version} stays, with its state"
                if not refused:
                    raise TrialIncompleteError(
                        f"the new build {new} {failure}, {stays} restored; that is no verdict "
                        f"on the release, the next update tries it again; see its log: "
                        f"{layout.log}",
                        new,
                        layout.log,
                    )
                try:
                    add_bad(layout, new)
                except OSError:
                    pass
                raise TrialFailedError(
                    f"the new build {new} {failure}, {stays} restored; it is not tried again "
                    f"until a newer release appears; see its log: {layout.log}",
                    new,
                    layout.log,
                )
            try:
                staged.wait()  # the staged file is on disk before it can be committed
            except OSError as e:
                raise dir_error(layout, e, "download") from e
        finally:
            staged.close()
        unfinished = _switch(tx, layout.staged)
    tx.record("done")
    extra = {"unfinished": f"updated to {new}; {unfinished}"} if unfinished else {}
    return Outcome("updated", current_version, new, layout.log, extra)


def rollback(
    installed: Path,
    current_version: str,
    state_dir: Path | None,
    *,
    trial_timeout: float = 60.0,
    say: Callable[[str], None] | None = None,
) -> str:
    """Put the previous build back in place, with the state it had; same trial, same journal.

    The build rolled back from is remembered as bad (``update`` will not reinstall it; a newer
    release will be). There is no previous build after a rollback.

    Returns:
        The version now installed (if the bookkeeping after the commit failed, ``say`` is
        told, in one line, that the next start finishes it).

    Raises:
        NoPreviousBuildError: no previous build is kept.
        TrialFailedError: the previous build failed its health check; nothing was changed.
        UpdateInProgressError, InstallError: as for :func:`update`.
    """
    note = say or (lambda _msg: None)
    layout = Layout(installed, state_dir)
    check_dirs(layout, "roll back")
    # Checked before the lock too: with no previous build, that is the one thing to say, even
    # where the directory is not writable (the lock file could not be created).
    if previous_build(layout) is None and not os.path.lexists(layout.journal):
        raise no_previous_build(installed)
    with Transaction(layout, "rollback", current_version) as tx:
        for line in tx.notes:
            note(line)
        previous = previous_build(layout)
        if previous is None:
            raise no_previous_build(installed)
        try:
            data = read_side(layout.previous_version, 256)
            prev = (data or b"").decode("utf-8", "replace").strip() or "previous"
        except (OSError, UntrustedFile):
            prev = "previous"
        tx.journal.new = prev
        try:
            tx.journal.candidate_ino = os.stat(previous).st_ino
        except OSError as e:
            raise dir_error(layout, e, "reading the previous build", "roll back") from e
        tx.record("trial")
        if state_dir is not None:
            try:
                snapshot_state(layout)
                if layout.previous_state.exists():
                    copy_state_from(layout, layout.previous_state)
            except OSError as e:
                raise dir_error(layout, e, "preparing the rollback", "roll back") from e
        tx.record("snapshot")
        # The previous build runs from its shiv extraction too: only from one this user made
        # (refused otherwise, in one sentence), reseeded from the installed build's if gone.
        try:
            seed_extraction(installed, previous)
        except UntrustedDirectoryError as e:
            raise InstallError(f"cannot roll back {installed}: {e}") from e
        except Exception:  # noqa: BLE001 - zipfile raises several kinds
            pass  # only an optimisation: shiv extracts the build itself in the trial
        failure, refused = _run_trial(tx, previous, trial_timeout)
        if failure is not None:
            cls = TrialFailedError if refused else TrialIncompleteError
            raise cls(
                f"the previous build {prev} {failure}, so it was not put back and "
                f"{current_version} stays; see its log: {layout.log}",
                prev,
                layout.log,
            )
        unfinished = _switch(tx, previous)
    tx.record("done")
    if unfinished:
        note(f"rolled back to {prev}; {unfinished}")
    return prev


def _run_trial(tx: Transaction, program: Path, timeout: float) -> tuple[str | None, bool]:
    """Run the trial of ``program`` through ``trial-running`` and ``trial-done``; return what
    failed (None: it passed) and whether that is the build's own verdict (see :class:`Trial`)."""
    layout = tx.layout
    try:
        trial = Trial(program, tx.journal.old, tx.journal.new, layout.log)
    except OSError as e:
        raise dir_error(layout, e, "writing the trial's log", tx.action) from e
    with trial:
        tx.record("trial-running")
        failure = trial.wait(timeout)
    tx.record("trial-done")
    return failure, trial.refused


def _switch(tx: Transaction, candidate: Path) -> str | None:
    """The commit: keep the old build (update), one ``os.replace``, ``fsync``, bookkeeping.

    Returns:
        None, or (when the bookkeeping after the commit point failed: the candidate *is*
        installed, the journal stays and the next start or update finishes) a sentence's end
        saying so.
    """
    layout = tx.layout
    tx.record("switch")
    try:
        if tx.journal.kind == "update":
            if untrusted_dir(layout.previous_dir) is not None or os.path.islink(
                layout.previous_dir
            ):
                remove(layout.previous_dir)  # not ours: never link our build into it
            layout.previous_dir.mkdir(mode=0o700, exist_ok=True)
            remove(layout.previous_tmp)
            os.link(layout.installed, layout.previous_tmp)
            tx.record("linked")
        # The commit point: the installed name goes from the old file to the candidate in one
        # rename(2); it never names nothing, and never a partial file.
        os.replace(candidate, layout.installed)
    except OSError as e:
        raise dir_error(layout, e, "switching to the new build", tx.action) from e
    tx.record("replaced")
    # From here on the candidate is installed: a failure is bookkeeping left for later, never
    # a failed update (recovery recognises the commit by the inode alone).
    try:
        fsync_dir(layout.dir)
        tx.record("committed")
        tx.finish()
    except (OSError, InstallError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return f"finishing at the next start ({reason} while tidying up in {layout.dir})"
    return None


def recover_at_start(
    installed: Path, state_dir: Path | None, say: Callable[[str], None] | None = None
) -> bool:
    """The app-start hook: if a journal is left, finish or undo it (cheap when there is none).

    Never blocks and never raises for the environment: a journal that is not ours, a
    directory others may write, a lock someone holds, a full disk: one line to ``say`` and the
    installed build runs as it is (the next start tries again).

    Returns:
        True when the installed file was changed (the caller should start it again).
    """
    note = say or (lambda _msg: None)
    layout = Layout(installed, state_dir)
    if not os.path.lexists(layout.journal):
        return False
    lock = UpdateLock(layout)
    try:
        check_dirs(layout, "finish the interrupted update of")
        if not lock.acquire():
            note(
                f"not finishing the interrupted update of {installed} now: another process "
                f"holds its lock {layout.lock}; the next start tries again"
            )
            return False
    except InstallError as e:
        note(str(e))
        return False
    try:
        before = inode(installed)
        recover(layout, note)
        return inode(installed) != before
    except (OSError, SelfUpdateError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        note(
            f"could not finish the interrupted update of {installed} ({reason}); the installed "
            "build runs as it is and the next start tries again"
        )
        return False
    finally:
        lock.release()
