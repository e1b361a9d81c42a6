"""One update or rollback as one object: the lock, the journal, the phases and their failpoints,
and recovery from a journal a killed process left.

Every phase of a transaction is entered through :meth:`Transaction.record`, the one place that
writes the journal (for the phases that change what recovery would do) and that hosts the
failpoint of the same name. Recovery is a pure plan (:func:`plan_recovery`) over what the
journal recorded and the installed file's inode, carried out by :meth:`Transaction.undo` or
:meth:`Transaction.finish`.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from selfupdate._durable import fsync_dir, write_atomic
from selfupdate.errors import InstallError, UpdateInProgressError
from selfupdate.install._layout import (
    Layout,
    UntrustedFile,
    check_dirs,
    dir_error,
    inode,
    read_side,
    remove,
)
from selfupdate.install._state import forget_states, keep_snapshot_as_previous, undo_state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    Note = Callable[[str], None]

__all__ = [
    "FAILPOINTS",
    "FAILPOINT_ENV",
    "JOURNAL_FORMAT",
    "Journal",
    "Transaction",
    "VERDICT_REASONS",
    "UpdateLock",
    "Verdict",
    "add_bad",
    "clear_bad",
    "missing_snapshot",
    "parse_bad",
    "plan_recovery",
    "read_bad",
    "read_journal",
    "recover",
]

#: Every phase of an update, in the order the flow enters them (a rollback passes the same
#: phases but ``download``, ``downloaded`` and ``linked``). :meth:`Transaction.record` enters
#: one; the crash tests stop the process at any of them (:data:`FAILPOINT_ENV`).
#:
#: ``locked``: the lock is held, leftovers recovered. ``download``*: about to download.
#: ``downloaded``: the staged file is complete. ``trial``*: about to snapshot the state and try
#: the candidate. ``snapshot``*: the state is snapshotted (journaled, so that a snapshot gone
#: missing is said, never taken for "nothing to restore"). ``trial-running``: the candidate runs
#: as ``post-update``. ``trial-done``: it passed or failed. ``switch``*: about to switch.
#: ``linked``: the installed build is hard-linked as the previous one. ``replaced``: the commit
#: point is passed (``os.replace``). ``committed``*: the commit is recorded. ``done``: the
#: bookkeeping is finished and the lock released. (*: written to the journal.)
FAILPOINTS = (
    "locked", "download", "downloaded", "trial", "snapshot", "trial-running", "trial-done",
    "switch", "linked", "replaced", "committed", "done",
)

#: The phases that rewrite the journal: each changes what :func:`plan_recovery` decides.
JOURNALED = frozenset({"download", "trial", "snapshot", "switch", "committed"})

#: The journaled phases at which the state's snapshot has been taken (before the commit).
SNAPSHOT_TAKEN = frozenset({"snapshot", "switch"})

#: With ``SELFUPDATE_TEST_STOP_AT=PHASE`` in the environment, the process stops itself
#: (``SIGSTOP``) when it enters ``PHASE``, so that a test can ``SIGKILL`` it at exactly that
#: instant. Tests only; costs one dictionary lookup per phase otherwise.
FAILPOINT_ENV = "SELFUPDATE_TEST_STOP_AT"

JOURNAL_FORMAT = 1


def _failpoint(phase: str) -> None:
    if os.environ.get(FAILPOINT_ENV) == phase:
        import signal

        os.kill(os.getpid(), signal.SIGSTOP)


@dataclass
class Journal:
    """What the journal records (a JSON object of these fields and ``format``)."""

    phase: str = "unknown"  # the last journaled phase entered (see FAILPOINTS)
    kind: str = "update"  # "update" or "rollback"
    old: str = ""  # the version installed when the transaction began
    new: str = ""  # the candidate's version
    state_dir: str | None = None  # the app's state directory, if it has one
    candidate_ino: int | None = None  # inode of the candidate file (os.replace keeps it)

    def to_bytes(self) -> bytes:
        return json.dumps({"format": JOURNAL_FORMAT, **asdict(self)}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Journal:
        """Parse a journal; anything unreadable is a journal of an ``unknown`` phase (which
        recovery undoes: a torn journal cannot happen, it is replaced atomically)."""
        try:
            value = json.loads(data)
        except ValueError:
            return cls()
        if not isinstance(value, dict):
            return cls()
        known = {f.name: value[f.name] for f in fields(cls) if f.name in value}
        for name, v in known.items():
            kinds = _FIELD_TYPES[name]
            if not isinstance(v, kinds) or isinstance(v, bool) or (
                isinstance(v, str) and "\0" in v
            ):
                return cls()
        if known.get("kind", "update") not in ("update", "rollback"):
            return cls()
        return cls(**known)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "phase": (str,), "kind": (str,), "old": (str,), "new": (str,),
    "state_dir": (str, type(None)), "candidate_ino": (int, type(None)),
}


def read_journal(layout: Layout) -> Journal | None:
    """The journal, or None when there is none.

    Raises:
        UntrustedFile: it is not a regular file the right user owns (a FIFO, a symlink,
            another user's file): it is to be ignored, never opened blocking.
        OSError: it cannot be read.
    """
    data = read_side(layout.journal)
    return None if data is None else Journal.from_bytes(data)


def plan_recovery(journal: Journal | None, installed_ino: int | None) -> str:
    """Decide what to do with a transaction a killed process left in the journal (pure).

    Args:
        journal: what the journal holds, or None when there is none.
        installed_ino: inode number of the installed file now (None if it is missing).

    Returns:
        ``"none"`` (nothing to do), ``"undo"`` (the commit point was not reached: put the state
        snapshot back, drop the staged file) or ``"finish"`` (the candidate build is installed:
        complete the bookkeeping).
    """
    if journal is None:
        return "none"
    if journal.phase in ("download", "trial", "snapshot"):
        return "undo"
    if journal.phase == "switch":
        # os.replace keeps the inode: the candidate is installed iff the inode is the staged one.
        same = installed_ino is not None and installed_ino == journal.candidate_ino
        return "finish" if same else "undo"
    if journal.phase == "committed":
        return "finish"
    return "undo"


# --------------------------------------------------------------------------------------------
# Versions not to install again: held (rolled back from) or failed (their trial refused them)

#: Why a version is recorded in ``D/.I.bad``: ``"held"`` (the operator rolled back from it),
#: ``"failed"`` (its own trial refused it) or ``"unknown"`` (recorded by an older updater,
#: which did not say which).
VERDICT_REASONS = ("held", "failed", "unknown")


@dataclass(frozen=True)
class Verdict:
    """One version recorded in ``D/.I.bad`` (one JSON object per line of that file).

    Attributes:
        version: the release's version.
        reason: one of :data:`VERDICT_REASONS`.
        when: ISO 8601 UTC (``2026-12-02T06:00:00Z``), or ``""`` when unknown.
        detail: one short line: what failed (the trial's last log lines), or ``""``.
    """

    version: str
    reason: str
    when: str = ""
    detail: str = ""


def parse_bad(data: bytes) -> dict[str, Verdict]:
    """The verdicts in the bytes of ``D/.I.bad`` (pure): one JSON object per line; a JSON list
    of versions or plain version lines (what older updaters wrote) are read as reason
    ``"unknown"``; lines that are neither are skipped. A later line for a version wins."""
    text = data.decode("utf-8", "replace")
    out: dict[str, Verdict] = {}
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            return {}
        items = value if isinstance(value, list) else []
        return {str(v): Verdict(str(v), "unknown") for v in items if isinstance(v, str) and v}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if not line.startswith("{"):
            if len(line) <= 128 and " " not in line:
                out[line] = Verdict(line, "unknown")
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        version, reason = obj.get("version"), obj.get("reason")
        if not isinstance(version, str) or not version or reason not in VERDICT_REASONS:
            continue
        when, detail = obj.get("when", ""), obj.get("detail", "")
        out.pop(version, None)  # keep the file order: the latest record last
        out[version] = Verdict(
            version, reason, when if isinstance(when, str) else "",
            detail if isinstance(detail, str) else "",
        )
    return out


def read_bad(layout: Layout, note: Note | None = None) -> dict[str, Verdict]:
    """The versions recorded as held or failed (version -> :class:`Verdict`); a ``.bad`` that
    is not a regular file the right user owns is ignored (one line to ``note``)."""
    try:
        data = read_side(layout.bad)
    except UntrustedFile as e:
        if note is not None:
            note(str(e))
        return {}
    except OSError:
        return {}
    return parse_bad(data) if data is not None else {}


def add_bad(layout: Layout, version: str, reason: str = "failed", detail: str = "") -> None:
    """Record ``version`` as ``reason`` (``"held"`` or ``"failed"``), replacing an earlier
    record of it; the file keeps the last 50 (0600, replaced atomically).

    Raises:
        ValueError: ``reason`` is not one of :data:`VERDICT_REASONS`.
        OSError: the file cannot be written.
    """
    import time

    if reason not in VERDICT_REASONS:
        raise ValueError(f"unknown verdict reason {reason!r}")
    verdicts = read_bad(layout)
    verdicts.pop(version, None)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    verdicts[version] = Verdict(version, reason, when, " ".join(detail.split())[:300])
    _write_bad(layout, list(verdicts.values())[-50:])


def clear_bad(layout: Layout, version: str) -> bool:
    """Forget the record of ``version`` (after it passed a forced trial); True if there was one.

    Raises:
        OSError: the file cannot be written.
    """
    verdicts = read_bad(layout)
    if verdicts.pop(version, None) is None:
        return False
    if verdicts:
        _write_bad(layout, list(verdicts.values()))
    else:
        remove(layout.bad)
    return True


def _write_bad(layout: Layout, verdicts: list[Verdict]) -> None:
    lines = [json.dumps(asdict(v), ensure_ascii=False) + "\n" for v in verdicts]
    write_atomic(layout.bad, "".join(lines).encode(), mode=0o600)


# --------------------------------------------------------------------------------------------
# Lock


class UpdateLock:
    """Exclusive ``flock`` on ``D/.I.lock``; released by the kernel if the holder dies."""

    def __init__(self, layout: Layout, action: str = "update") -> None:
        self.layout = layout
        self.action = action  # for messages: "update", "roll back"
        self.fd: int | None = None

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock; False when another process holds it (and ``blocking`` is False).

        The lock file is 0600 and must be a regular file of the effective user or root:
        ``flock`` needs only a read descriptor, so a lock file others may open is a lock
        others may hold (issue 9).

        Raises:
            InstallError: the lock file cannot be created (directory not writable, ...), or
                it is not a regular file of this user or root.
        """
        import fcntl
        import stat

        lock = self.layout.lock
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(lock, flags, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise InstallError(
                    f"cannot {self.action} {self.layout.installed}: its lock file {lock} is a "
                    "symbolic link; remove it if no update is running"
                ) from e
            raise dir_error(self.layout, e, "lock", self.action) from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0):
            os.close(fd)
            raise InstallError(
                f"cannot {self.action} {self.layout.installed}: its lock file {lock} is not a "
                f"regular file of yours or root's (owner {st.st_uid}); remove it if no update "
                "is running"
            )
        if st.st_mode & 0o077:
            # Made 0644 by an older version: close it to other users (who could hold it).
            try:
                os.fchmod(fd, 0o600)
            except OSError:
                os.close(fd)
                raise InstallError(
                    f"cannot {self.action} {self.layout.installed}: its lock file {lock} may be "
                    f"opened by other users (mode {stat.S_IMODE(st.st_mode):04o}), who could "
                    "hold it, and is not yours to change: ask its owner to chmod 600 it"
                ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> UpdateLock:
        if not self.acquire():
            raise UpdateInProgressError(
                f"another update of {self.layout.installed} is in progress; try again when "
                "it has finished"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------------------------
# The transaction


class Transaction:
    """One update or rollback of one installed file.

    Used as a context manager: entering takes the lock (:class:`UpdateLock`), enters
    ``locked`` and recovers what an earlier, killed transaction left; leaving on an exception
    does what recovery would do with what was recorded so far (undo before the commit point,
    finish after it); leaving always releases the lock. Phases must be entered in the order of
    :data:`FAILPOINTS` (a call out of order raises ``RuntimeError``).

    Args:
        layout: the installed file and state directory.
        kind: ``"update"`` or ``"rollback"``.
        old: the version installed now.
    """

    def __init__(self, layout: Layout, kind: str, old: str) -> None:
        if kind not in ("update", "rollback"):
            raise ValueError(f"unknown transaction kind {kind!r}")
        self.layout = layout
        sd = str(layout.state_dir) if layout.state_dir is not None else None
        self.journal = Journal(phase="", kind=kind, old=old, state_dir=sd)
        self._step = -1
        self._lock = UpdateLock(layout, "update" if kind == "update" else "roll back")
        self.notes: list[str] = []  # one line each, for the user (an ignored side file, ...)
        #: What undoing did to the state: "restored", "none" (nothing to put back), "missing"
        #: (the snapshot taken is gone), or None (not undone, or undoing failed: see
        #: :attr:`undo_error`; the journal stays and the next recovery tries again).
        self.state_undo: str | None = None
        self.undo_error: OSError | None = None
        self._plan: str | None = None  # what abort() did, once it did

    @classmethod
    def resume(cls, layout: Layout, journal: Journal) -> Transaction:
        """The transaction a journal describes (its own state directory, if it names one)."""
        state_dir = Path(journal.state_dir) if journal.state_dir else layout.state_dir
        tx = cls(Layout(layout.installed, state_dir), journal.kind, journal.old)
        tx.journal = journal
        tx._step = len(FAILPOINTS)  # nothing more to record
        return tx

    @property
    def action(self) -> str:
        return self._lock.action

    def record(self, phase: str) -> None:
        """Enter ``phase``: write it to the journal (fsynced) if it is journaled, then pass its
        failpoint.

        Raises:
            RuntimeError: ``phase`` is unknown or not after the phase entered last.
            InstallError: the journal cannot be written.
        """
        try:
            step = FAILPOINTS.index(phase)
        except ValueError:
            raise RuntimeError(f"unknown phase {phase!r}") from None
        if step <= self._step:
            raise RuntimeError(f"phase {phase!r} entered after {FAILPOINTS[self._step]!r}")
        self._step = step
        if phase in JOURNALED:
            self.journal.phase = phase
            try:
                write_atomic(self.layout.journal, self.journal.to_bytes(), mode=0o600)
            except OSError as e:
                raise dir_error(self.layout, e, "writing the journal", self.action) from e
        _failpoint(phase)

    def __enter__(self) -> Transaction:
        self._lock.__enter__()
        try:
            self.record("locked")
            try:
                recover(self.layout, self.notes.append)
            except OSError as e:
                raise dir_error(
                    self.layout, e, "finishing an interrupted update", self.action
                ) from e
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is not None:
                self.abort()
        finally:
            self._lock.release()

    def abort(self) -> str:
        """After a failure: what recovery would do with what was recorded (the journal as
        written so far and the installed file's inode). Returns that plan; a second call
        does nothing more (the flow aborts before it says what happened to the state)."""
        if self._plan is not None:
            return self._plan
        journal = self.journal if self.journal.phase else None
        action = plan_recovery(journal, inode(self.layout.installed))
        self._plan = action
        try:
            if action == "undo":
                self.undo()
            elif action == "finish":
                self.finish()
        except OSError as e:
            self.undo_error = e  # the journal stays: the next update or start finishes the job
        return action

    def undo(self) -> None:
        """Put everything back as before the transaction (the commit point was not passed)."""
        layout = self.layout
        if layout.state_dir is not None:
            self.state_undo = undo_state(layout, self.journal.phase in SNAPSHOT_TAKEN)
        remove(layout.previous_tmp)
        remove(layout.staging)
        self._clear()

    def finish(self) -> None:
        """Complete the bookkeeping of a transaction whose candidate is installed."""
        layout = self.layout
        if self.journal.kind == "update":
            # The build we replaced becomes "previous", its state the snapshot taken before.
            if layout.previous_tmp.exists():
                write_atomic(layout.previous_version, self.journal.old.encode(), mode=0o600)
                os.replace(layout.previous_tmp, layout.previous)
                fsync_dir(layout.previous_dir)
            if layout.state_dir is not None:
                keep_snapshot_as_previous(layout)
        else:
            # Rollback: the build rolled back from is held (no verdict on it: the operator's
            # choice, undone by `update --force` or a newer release); nothing is previous.
            if self.journal.old:
                add_bad(layout, self.journal.old, "held", "rolled back from")
            remove(layout.previous_dir)
            if layout.state_dir is not None:
                forget_states(layout)
        remove(layout.staging)
        fsync_dir(layout.dir)
        self._clear()

    def _clear(self) -> None:
        try:
            os.unlink(self.layout.journal)
        except FileNotFoundError:
            return
        fsync_dir(self.layout.dir)


def recover(layout: Layout, note: Note | None = None) -> str:
    """Finish or undo what a killed transaction left behind. Call with the lock held.

    A journal that is not a regular file of the right user (:func:`read_journal`) is ignored,
    with one line to ``note``: it was not written by a transaction of ours.

    Returns:
        What was done: ``"none"``, ``"undo"`` or ``"finish"``.

    Raises:
        OSError: the journal cannot be read, or finishing or undoing failed (the journal
            stays, so a later call tries again).
    """
    try:
        journal = read_journal(layout)
    except UntrustedFile as e:
        if note is not None:
            note(str(e))
        return "none"
    action = plan_recovery(journal, inode(layout.installed))
    if journal is None or action == "none":
        return "none"
    tx = Transaction.resume(layout, journal)
    check_dirs(tx.layout, "recover")  # the state directory the journal names, too
    if action == "undo":
        tx.undo()
        if note is not None and tx.state_undo == "missing":
            note(missing_snapshot(tx.layout, "interrupted update"))
    else:
        tx.finish()
    return action


def missing_snapshot(layout: Layout, what: str) -> str:
    """The sentence for a snapshot that was taken and is gone when it is to be put back."""
    return (
        f"the copy of the state taken before the {what} is gone ({layout.snapshot}), so the "
        "state directory is left as it was found: restore it from a backup if the new build "
        "changed it"
    )

