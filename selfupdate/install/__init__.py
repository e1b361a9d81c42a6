"""In-place install of a verified build: lock, journal, trial as ``post-update``, atomic switch.

Stdlib and :mod:`reexec_core` only: the release client is handed in by the caller (anything
with ``check``/``download_to``), and nothing here imports ``tuf``,
``requests``, ``cryptography`` or :mod:`selfupdate.app`.

The flow of ``APP update`` (issue 5), for the installed file ``I`` in directory ``D``, as the
phases of one :class:`Transaction` (:data:`FAILPOINTS`; * marks those written to the journal):

1. ``locked``: ``flock`` on ``D/.I.lock`` (exclusive, non-blocking: a second updater is told
   "another update is in progress"; the kernel drops the lock of a killed process); what a
   killed transaction left is finished or undone.
2. ``download``*: the newest release is downloaded through the client into ``D/.I.update/I``
   (same filesystem, ``O_CREAT|O_EXCL|O_NOFOLLOW``; its ``fsync`` runs in a thread until the
   commit). The staged file has the installed file's *name*, so shiv extracts it once, for the
   trial, into the directory the installed build will use after the switch.
3. ``trial``*: the app's state directory is snapshotted, then the new build is tried before it
   is installed: it runs as the registered child ``post-update OLD NEW`` (migrations and
   health check) under a time limit, its output in ``D/.I.post-update.log``.
4. ``switch``*: the current build is hard-linked to ``D/.I.previous/I`` (for rollback),
   ``os.replace`` puts the staged file over ``I`` (the commit point), ``D`` is ``fsync``'d;
   ``committed``*: the snapshot becomes the previous build's state. :func:`update` returns;
   the caller continues in the new build (:func:`selfupdate.app.update` execs it, same PID).
5. Failure: ``I`` is untouched, the state snapshot is put back; when the build's own
   migration or health check failed, or it is not the build it was released as (another app or
   version, no update configuration: checked before it runs), the version is recorded as
   *failed* in ``D/.I.bad`` and not tried again until a newer release appears or ``force``
   asks for it (anything else, a timeout too, is retried next time). A rollback records the
   build rolled back from as *held* there (no verdict: the operator's choice).

Crash safety: each journaled phase is written before it happens (temporary file, ``fsync``,
``rename``, ``fsync`` of ``D``). :func:`recover` (under the lock, by the next updater and,
cheaply, at every start of the app: :func:`recover_at_start`) finishes or undoes whatever a
killed updater left: before the commit point it undoes (state restored, staged file removed,
no verdict on the build); after it, it finishes. The commit point is recognised without reading
any file: the journal holds the inode number of the staged file, and ``os.replace`` keeps it.
Planning is pure (:func:`plan_recovery`, :func:`restore_steps`).

Rollback is the same transaction with the previous build as the candidate.
"""

from __future__ import annotations

from selfupdate.errors import (
    InstallError,
    KnownBadError,
    NoPreviousBuildError,
    TrialFailedError,
    TrialIncompleteError,
    UpdateInProgressError,
)
from selfupdate.install._flow import (
    Outcome,
    read_channel,
    recover_at_start,
    rollback,
    update,
    write_channel,
)
from selfupdate.install._layout import STATE_EXCLUDE, STATE_RESERVED, Layout
from selfupdate.install._state import restore_state, restore_steps, snapshot_state, undo_state
from selfupdate.install._transaction import (
    FAILPOINT_ENV,
    FAILPOINTS,
    Journal,
    Transaction,
    UpdateLock,
    Verdict,
    plan_recovery,
    read_bad,
    read_journal,
    recover,
)

__all__ = [
    "FAILPOINTS",
    "FAILPOINT_ENV",
    "STATE_EXCLUDE",
    "STATE_RESERVED",
    "InstallError",
    "Journal",
    "KnownBadError",
    "Layout",
    "NoPreviousBuildError",
    "Outcome",
    "Transaction",
    "TrialFailedError",
    "TrialIncompleteError",
    "UpdateInProgressError",
    "UpdateLock",
    "Verdict",
    "plan_recovery",
    "read_bad",
    "read_channel",
    "read_journal",
    "recover",
    "recover_at_start",
    "restore_state",
    "restore_steps",
    "rollback",
    "snapshot_state",
    "undo_state",
    "update",
    "write_channel",
]
