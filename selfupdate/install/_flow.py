"""The update and rollback flows (see :mod:`selfupdate.install` for the whole story)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from selfupdate._durable import fsync_dir
from selfupdate._shiv._seed import check_extraction_root, seed_extraction
from selfupdate._shiv._trust import UntrustedDirectoryError
from selfupdate.errors import (
    DownMigrationError,
    HeldReleaseError,
    InstallError,
    KnownBadError,
    SelfUpdateError,
    TrialFailedError,
    TrialIncompleteError,
    TrialTimeoutError,
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
from selfupdate.install._staging import download_plan, stage_download
from selfupdate.install._state import copy_state_from, rollback_state, snapshot_state
from selfupdate.install._transaction import (
    Transaction,
    UpdateLock,
    Verdict,
    add_bad,
    clear_bad,
    missing_snapshot,
    read_bad,
    recover,
)
from selfupdate.install._trial import Trial, build_refusal, log_tail, same_version

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from selfupdate.install._staging import ClientLike

__all__ = [
    "Outcome", "read_channel", "recover_at_start", "refusal_for", "rollback", "update",
    "write_channel",
]


@dataclass
class Outcome:
    """What :func:`update` did."""

    status: str  # "up-to-date", "available" (check only), "updated"
    old: str
    new: str | None = None
    log_path: Path | None = None
    # "bad": the available one is recorded as held or failed, "verdict": that record (a
    # Verdict) or None; "notes": the release notes of the one available; "withdrawn": what the
    # client knows of the installed version's withdrawal (or None); "unfinished": after the
    # commit point the bookkeeping failed (one sentence; the new build is installed, the next
    # start finishes); "rollout": a newer release not offered to this machine yet (or None);
    # "served": which mirror served "metadata" and "release" (empty with one URL); "download"
    # (check only): what the update would download, a dict (bytes, full: the whole build's
    # bytes, delta: bool, said: for a person), or None when the client cannot tell
    extra: dict[str, Any] = field(default_factory=dict)


def _seen(client: ClientLike) -> dict[str, Any]:
    """What the client saw besides the release: a newer one this machine is not offered yet
    (a phased rollout), and which mirrors served."""
    return {"rollout": getattr(client, "rollout_waiting", None),
            "served": getattr(client, "served_by", None) or {}}


def update(
    installed: Path,
    client: ClientLike,
    current_version: str,
    state_dir: Path | None,
    *,
    check_only: bool = False,
    trial_timeout: float = 60.0,
    say: Callable[[str], None] | None = None,
    force: bool = False,
    to: str | None = None,
    channel: str | None = None,
    downgrade: bool = False,
    before_trial: Callable[[Path], list[str]] | None = None,
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
        force: try a release recorded as held or failed again (its record is cleared when
            it passes).
        to: install this published version instead of the newest (the client's ``find``;
            also an older one: a downgrade crosses no migration, only ``before_trial``).
        channel: the channel the client follows, remembered in ``D/.I.channel`` once the
            update (or the finding that there is none) succeeded.
        downgrade: ``to`` is older than ``current_version`` (said before the download; the
            caller knows PEP 440 order, this stdlib-only package does not).
        before_trial: ``before_trial(log) -> lines``, run once the state is snapshotted and
            before the candidate's trial, in this process (a downgrade's down-migrations, run
            by the newer build, the one that knows them): it may write ``log`` (the update's
            log) and returns lines the trial's log begins with. If it raises, the state is
            restored, nothing is installed and nothing is recorded about the release.

    Returns:
        The outcome. After ``"updated"`` the new build is installed; the caller decides how
        to continue in it (``selfupdate.app.update`` execs it).

    Raises:
        UpdateInProgressError: another updater holds the lock.
        KnownBadError: the release offered failed its trial before; ``HeldReleaseError``:
            it was rolled back from (both: unless ``force``).
        TrialFailedError: the new build's migration or health check failed, or it is not
            the build it was released as (another app or version, no update configuration);
            nothing was changed, the release is recorded as failed.
        TrialIncompleteError: the trial could not finish (the build's configuration could
            not be read, extraction, space, a kill;
            ``TrialTimeoutError``: the time limit); nothing was changed, no verdict.
        InstallError: the directory is not writable or not trusted, the disk is full, ...
        SelfUpdateError: from the client (verification, network, ...).
    """
    note = say or (lambda _msg: None)
    layout = Layout(installed, state_dir)
    if check_only:
        release = _choose(client, current_version, to)
        extra: dict[str, Any] = {"withdrawn": getattr(client, "installed_withdrawn", None),
                                 "channel": getattr(client, "channel", None), **_seen(client)}
        if release is None or (to is not None and same_version(release.version, current_version)):
            return Outcome("up-to-date", current_version, extra=extra)
        verdict = read_bad(layout, note).get(str(release.version))
        plan = download_plan(client, release, installed)
        extra.update(bad=verdict is not None, verdict=verdict,
                     notes=getattr(release, "notes", None),
                     download=plan.summary() if plan is not None else None)
        return Outcome("available", current_version, release.version, extra=extra)
    check_dirs(layout, "update")
    try:
        check_extraction_root(installed)  # where the trial will run: before any download
    except UntrustedDirectoryError as e:
        raise InstallError(f"cannot update {installed}: {e}") from e
    with Transaction(layout, "update", current_version) as tx:
        for line in tx.notes:
            note(line)
        release = _choose(client, current_version, to)
        withdrawn = {"withdrawn": getattr(client, "installed_withdrawn", None), **_seen(client)}
        if release is None:
            _remember(layout, channel, note)
            return Outcome("up-to-date", current_version, extra=withdrawn)
        new = str(release.version)
        if to is not None and same_version(new, current_version):
            _remember(layout, channel, note)
            return Outcome("up-to-date", current_version, extra=withdrawn)
        verdict = read_bad(layout, note).get(new)
        if verdict is not None and not force:
            raise refusal_for(verdict, layout)
        if downgrade and before_trial is not None:
            note(f"downgrading {current_version} -> {new} as asked: {current_version}'s "
                 f"down-migrations run first (the state is restored if one fails), then "
                 f"{new}'s health check decides")
        elif downgrade:
            note(f"downgrading {current_version} -> {new} as asked: no migration runs (the "
                 f"state stays as {current_version} left it; {new}'s health check decides)")
        mode = os.stat(installed).st_mode & 0o7777
        tx.journal.new = new
        tx.record("download")
        plan = download_plan(client, release, installed)
        note(f"downloading {new}: {plan.said()} ..." if plan is not None else
             f"downloading {new} ...")
        staged = stage_download(layout, client, release, mode, plan, note)
        if getattr(client, "served_by", None):  # several mirrors: say which one served
            note(f"downloaded {new} from {client.served_by.get('release')}")  # type: ignore[attr-defined]
        try:
            tx.record("downloaded")
            # The trial begins with what the build says about itself (read, not run).
            try:
                why = build_refusal(layout.staged, installed, getattr(release, "app", None), new)
            except OSError as e:  # the disk's or the system's fault: no verdict on the release
                raise TrialIncompleteError(
                    f"could not read the release configuration embedded in {e.filename} "
                    f"({e.strerror or e}), so the new build {new} was not tried or installed and "
                    f"{current_version} stays; that is no verdict on the release: fix the "
                    "cause and update again",
                    new,
                    layout.log,
                ) from e
            if why is not None:
                _record(layout, new, "failed", why)
                raise TrialFailedError(
                    f"the new build {new} {why}: it was not installed and {current_version} "
                    "stays; it is not tried again until a newer release appears",
                    new,
                    layout.log,
                )
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
                preface = before_trial(layout.log) if before_trial is not None else None
            except DownMigrationError as e:
                tx.abort()  # first, so that the error says what became of the state
                raise DownMigrationError(
                    f"{e}, so {new} was not installed and {current_version} stays"
                    f"{_state_said(tx)}; {new} is not to blame: see the log {e.log_path}",
                    e.version,
                    e.log_path,
                ) from e.__cause__
            try:
                seed_extraction(installed, layout.staged)
            except UntrustedDirectoryError as e:
                # Not the release's fault (not remembered as bad): where it would run is not ours.
                raise InstallError(f"cannot update {installed}: {e}") from e
            except Exception:  # noqa: BLE001 - zipfile raises several kinds
                pass  # only an optimisation: shiv extracts the build itself in the trial
            note(f"trying {new} (migrations and health check) ...")
            trial = _run_trial(tx, layout.staged, trial_timeout, preface)
            if trial.failure is not None:
                tx.abort()  # first, so that the error says what became of the state
                raise _trial_error(
                    trial, layout, new, f"{current_version} stays{_state_said(tx)}", trial_timeout
                )
            try:
                staged.wait()  # the staged file is on disk before it can be committed
            except OSError as e:
                raise dir_error(layout, e, "download") from e
        finally:
            staged.close()
        unfinished = _switch(tx, layout.staged)
        if verdict is not None:
            try:
                clear_bad(layout, new)  # it passed: the record was wrong, or is out of date
            except OSError:
                pass
        _remember(layout, channel, note)
    tx.record("done")
    extra = {"unfinished": f"updated to {new}; {unfinished}"} if unfinished else {}
    return Outcome("updated", current_version, new, layout.log, extra)


def _choose(client: ClientLike, current_version: str, to: str | None) -> Any:
    """The release to install: the newest newer one, or (``to``) the one asked for."""
    if to is None:
        return client.check(current_version)
    find = getattr(client, "find", None)
    if find is None:
        raise InstallError(
            "this app's update client cannot install a chosen version (it has no find()): "
            "update without --to"
        )
    import inspect

    try:  # the installed version too, so the client can say whether it was withdrawn
        takes_current = len(inspect.signature(find).parameters) >= 2
    except (TypeError, ValueError):
        takes_current = False
    return find(to, current_version) if takes_current else find(to)


def refusal_for(verdict: Verdict, layout: Layout) -> KnownBadError:
    """The error saying why the release ``verdict`` records is not installed (pure)."""
    v = verdict.version
    on = f" on {verdict.when[:10]}" if verdict.when else ""
    if verdict.reason == "held":
        return HeldReleaseError(
            f"you rolled back from {v}{on}, so it is held: run `update --force` to try it again, "
            "or wait for a newer release",
            v,
            "held",
        )
    if verdict.reason == "failed":
        what = f" ({verdict.detail})" if verdict.detail else ""
        return KnownBadError(
            f"{v} failed its trial run{on}{what}, so it is not tried again until a newer release "
            f"is published: run `update --force` to try it again (log: {layout.log})",
            v,
        )
    return KnownBadError(
        f"{v} was set aside by an earlier version of the updater (it failed its trial or was "
        "rolled back from): run `update --force` to try it again, or wait for a newer release",
        v,
        "unknown",
    )


def _record(layout: Layout, version: str, reason: str, detail: str) -> None:
    try:
        add_bad(layout, version, reason, detail)
    except OSError:
        pass  # the refusal stands; only its memory is lost (the next update tries it again)


def _trial_error(
    trial: Trial, layout: Layout, new: str, stays: str, timeout: float
) -> TrialFailedError:
    """The one-sentence error of a failed trial of ``new`` (an update's: recorded as failed
    when the build itself refused); the log's last lines are quoted."""
    failure = trial.failure
    log = layout.log
    stays = f"so it was not installed and {stays}"
    if trial.timed_out:
        return TrialTimeoutError(
            f"the new build {new} {failure}, {stays}; a timeout is no verdict on the release, "
            "the next update tries it again (a longer limit: SELFUPDATE_TRIAL_TIMEOUT); see "
            f"its log: {log}",
            new,
            log,
            timeout,
        )
    tail = log_tail(log)
    said = f" (its log ends: {tail})" if tail else ""
    if not trial.refused:
        return TrialIncompleteError(
            f"the new build {new} {failure}{said}, {stays}; that is no verdict on the release, "
            f"the next update tries it again; see its log: {log}",
            new,
            log,
        )
    _record(layout, new, "failed", f"{failure}{said}")
    return TrialFailedError(
        f"the new build {new} {failure}{said}, {stays}; it is not tried again until a newer "
        f"release appears (`update --force` tries it again); see its log: {log}",
        new,
        log,
    )


def _state_said(tx: Transaction) -> str:
    """How the state ended after ``tx`` was aborted, as the end of a clause ("" without a
    state directory)."""
    layout = tx.layout
    if layout.state_dir is None:
        return ""
    if tx.state_undo == "restored":
        return ", with its state restored"
    if tx.state_undo == "missing":
        return f", but {missing_snapshot(layout, 'trial')}"
    if tx.state_undo == "none":
        return ", its state untouched"
    e = tx.undo_error
    why = (e.strerror or str(e)) if e is not None else "it was not undone"
    return (f", but putting its state back failed ({why}); the next start or update puts it "
            f"back from {layout.snapshot}")


def read_channel(layout: Layout) -> str | None:
    """The channel remembered by ``update --channel`` (``D/.I.channel``), or None."""
    try:
        data = read_side(layout.channel, 256)
    except (OSError, UntrustedFile):
        return None
    name = (data or b"").decode("utf-8", "replace").strip()
    return name or None


def write_channel(layout: Layout, channel: str) -> None:
    """Remember ``channel`` for later updates (0600, replaced atomically).

    Raises:
        OSError: it cannot be written.
    """
    from selfupdate._durable import write_atomic

    write_atomic(layout.channel, channel.encode() + b"\n", mode=0o600)


def _remember(layout: Layout, channel: str | None, note: Callable[[str], None]) -> None:
    if channel is None or read_channel(layout) == channel:
        return
    try:
        write_channel(layout, channel)
    except OSError as e:
        note(f"could not remember the channel {channel!r} in {layout.channel} "
             f"({e.strerror or e}); pass --channel again next time")


def rollback(
    installed: Path,
    current_version: str,
    state_dir: Path | None,
    *,
    trial_timeout: float = 60.0,
    say: Callable[[str], None] | None = None,
) -> str:
    """Put the previous build back in place, with the state it had; same trial, same journal.

    The build rolled back from is *held* (``update`` will not reinstall it unless forced; a
    newer release it will). There is no previous build after a rollback.

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
                kept = rollback_state(layout)  # ours, or an older version's (issue 11)
                if kept is not None:
                    copy_state_from(layout, kept)
            except OSError as e:
                raise dir_error(layout, e, "preparing the rollback", "roll back") from e
            if kept is None:
                note(f"no copy of the state from before the update to {current_version} is "
                     f"kept ({layout.previous_state}), so {prev} runs on the state as it is")
        tx.record("snapshot")
        # The previous build runs from its shiv extraction too: only from one this user made
        # (refused otherwise, in one sentence), reseeded from the installed build's if gone.
        try:
            seed_extraction(installed, previous)
        except UntrustedDirectoryError as e:
            raise InstallError(f"cannot roll back {installed}: {e}") from e
        except Exception:  # noqa: BLE001 - zipfile raises several kinds
            pass  # only an optimisation: shiv extracts the build itself in the trial
        trial = _run_trial(tx, previous, trial_timeout)
        if trial.failure is not None:
            cls = TrialFailedError if trial.refused else TrialIncompleteError
            tail = log_tail(layout.log) if not trial.timed_out else ""
            said = f" (its log ends: {tail})" if tail else ""
            tx.abort()  # first, so that the error says what became of the state
            raise cls(
                f"the previous build {prev} {trial.failure}{said}, so it was not put back and "
                f"{current_version} stays{_state_said(tx)}; see its log: {layout.log}",
                prev,
                layout.log,
            )
        unfinished = _switch(tx, previous)
    tx.record("done")
    if unfinished:
        note(f"rolled back to {prev}; {unfinished}")
    return prev


def _run_trial(
    tx: Transaction, program: Path, timeout: float, preface: list[str] | None = None
) -> Trial:
    """Run the trial of ``program`` through ``trial-running`` and ``trial-done``; return it
    (``.failure``: what failed, None if it passed; ``.refused``: the build's own verdict;
    ``.timed_out``; see :class:`Trial`)."""
    layout = tx.layout
    try:
        trial = Trial(program, tx.journal.old, tx.journal.new, layout.log, preface)
    except OSError as e:
        raise dir_error(layout, e, "writing the trial's log", tx.action) from e
    with trial:
        tx.record("trial-running")
        trial.failure = trial.wait(timeout)
    tx.record("trial-done")
    return trial


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
