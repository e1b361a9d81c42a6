"""In-place install of a verified build: lock, journal, trial as ``post-update``, atomic switch.

The flow of ``APP update`` (issue 5), for the installed file ``I`` in directory ``D``:

1. Lock ``D/.I.lock`` (``flock``, exclusive, non-blocking: a second updater is told "another
   update is in progress"; the kernel drops the lock of a killed process).
2. Download the newest release through :class:`selfupdate.client.UpdateClient` into
   ``D/.I.update/I`` (same filesystem, ``O_CREAT|O_EXCL|O_NOFOLLOW``, ``fsync``). The staged
   file has the installed file's *name*, so shiv extracts it once, for the trial, into the
   directory the installed build will use after the switch.
3. Snapshot the app's state directory, then try the new build before installing it: it runs as
   the registered child ``post-update OLD NEW`` (migrations + health check) under a time limit,
   its output in ``D/.I.post-update.log``.
4. Success: hard-link the current build to ``D/.I.previous`` (for rollback), ``os.replace`` the
   staged file over ``I`` (the commit point), ``fsync`` ``D``, keep the snapshot as the
   previous build's state, then hand over to the new build with ``exec_into`` (same PID).
5. Failure: ``I`` is untouched, the state snapshot is put back, the version is remembered as
   bad in ``D/.I.bad`` and not tried again until a newer release appears.

Crash safety: before each step the journal ``D/.I.journal`` records the phase (written to a
temporary file, ``fsync``, ``rename``, ``fsync`` of ``D``). :func:`recover` (run under the lock
by the next updater and, cheaply, at every start of the app) finishes or undoes whatever a
killed updater left: before the commit point it undoes (state restored, staged file removed,
no verdict on the build); after it, it finishes. The commit point is recognised without reading
any file: the journal holds the inode number of the staged file, and ``os.replace`` keeps it.

Planning is pure (:func:`plan_recovery`, :func:`restore_steps`); everything else is a thin shell
of file operations around it. Nothing here imports ``tuf``, ``requests`` or ``cryptography``:
the client is handed in by the caller.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from selfupdate._durable import fsync_dir, write_atomic
from selfupdate.app import INUSE_LOCK, TRIAL_ENTRY
from selfupdate.errors import (
    InstallError,
    KnownBadError,
    NoPreviousBuildError,
    TrialFailedError,
    UpdateInProgressError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO, Protocol

    class ReleaseLike(Protocol):
        version: str
        length: int

    class ClientLike(Protocol):
        def check(self, current_version: str) -> Any: ...
        def download_to(self, release: Any, fileobj: BinaryIO) -> None: ...


# Errors: defined in selfupdate.errors (one tree), re-exported here for callers of this module.
__all__ = [
    "InstallError", "KnownBadError", "NoPreviousBuildError", "TrialFailedError",
    "UpdateInProgressError", "Layout", "Outcome", "clean_shiv_dirs", "plan_recovery", "recover",
    "recover_at_start", "restore_steps", "rollback", "update",
]


# --------------------------------------------------------------------------------------------
# Where things live (pure)

JOURNAL_FORMAT = 1


@dataclass(frozen=True)
class Layout:
    """Every path the installer uses for one installed file and one state directory."""

    installed: Path
    state_dir: Path | None = None

    @property
    def dir(self) -> Path:
        return self.installed.parent

    def _side(self, suffix: str) -> Path:
        return self.dir / f".{self.installed.name}.{suffix}"

    @property
    def lock(self) -> Path:
        return self._side("lock")

    @property
    def journal(self) -> Path:
        return self._side("journal")

    @property
    def bad(self) -> Path:
        return self._side("bad")

    @property
    def staging(self) -> Path:
        return self._side("update")

    @property
    def staged(self) -> Path:
        # Same base name as the installed file: shiv names its extraction directory after it.
        return self.staging / self.installed.name

    @property
    def previous_dir(self) -> Path:
        return self._side("previous")

    @property
    def previous(self) -> Path:
        # Same base name again: rolling back reuses the extraction the old build had.
        return self.previous_dir / self.installed.name

    @property
    def previous_tmp(self) -> Path:
        return self.previous_dir / f".{self.installed.name}.tmp"

    @property
    def previous_version(self) -> Path:
        return self.previous_dir / "version"

    @property
    def log(self) -> Path:
        return self._side("post-update.log")

    def _state_side(self, suffix: str) -> Path:
        if self.state_dir is None:
            raise RuntimeError("this layout has no state directory")
        return self.state_dir.parent / f".{self.state_dir.name}.{suffix}"

    @property
    def snapshot(self) -> Path:
        """State as it was before the running transaction (format: ``state/`` or ``ABSENT``)."""
        return self._state_side("snapshot")

    @property
    def snapshot_tmp(self) -> Path:
        return self._state_side("snapshot.tmp")

    @property
    def previous_state(self) -> Path:
        """State matching the previous build (same format as :attr:`snapshot`)."""
        return self._state_side("previous")

    @property
    def discard(self) -> Path:
        return self._state_side("discard")


#: Names in the state directory that are caches, not state: neither snapshotted nor restored.
STATE_EXCLUDE = ("tuf-cache",)


# --------------------------------------------------------------------------------------------
# Pure planning


def plan_recovery(journal: dict[str, Any] | None, installed_ino: int | None) -> str:
    """Decide what to do with a transaction a killed process left in the journal.

    Args:
        journal: the journal's content, or None when there is none.
        installed_ino: inode number of the installed file now (None if it is missing).

    Returns:
        ``"none"`` (nothing to do), ``"undo"`` (the commit point was not reached: put the state
        snapshot back, drop the staged file) or ``"finish"`` (the candidate build is installed:
        complete the bookkeeping).
    """
    if not journal:
        return "none"
    phase = journal.get("phase")
    if phase in ("download", "trial"):
        return "undo"
    if phase == "switch":
        # os.replace keeps the inode: the candidate is installed iff the inode is the staged one.
        return "finish" if installed_ino == journal.get("candidate_ino") else "undo"
    if phase == "committed":
        return "finish"
    return "undo"


def restore_steps(snap_has_state: bool, snap_absent: bool, live_exists: bool) -> list[str]:
    """Steps that put a snapshot back in place of the live state directory (idempotent).

    A snapshot directory holds either ``state/`` (a copy of the state directory) or the marker
    ``ABSENT`` (there was no state directory). Each step is a rename or a removal, so a kill
    between steps is repaired by planning again from what is on disk.

    Returns:
        A list of ``"discard-live"`` (rename the live state away), ``"restore"`` (rename
        ``state/`` into place) and ``"drop"`` (remove the snapshot and the discarded state).
    """
    steps = []
    if snap_has_state or snap_absent:
        if live_exists:
            steps.append("discard-live")
        if snap_has_state:
            steps.append("restore")
    steps.append("drop")
    return steps


def newest_is_bad(version: str, bad: list[str]) -> bool:
    """True when ``version`` is remembered as bad (it failed a trial or was rolled back)."""
    return version in bad


def read_journal(layout: Layout) -> dict[str, Any] | None:
    try:
        data = layout.journal.read_bytes()
    except FileNotFoundError:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        # A torn journal cannot happen (it is replaced atomically); treat junk as "undo".
        return {"phase": "unknown"}
    return value if isinstance(value, dict) else {"phase": "unknown"}


def write_journal(layout: Layout, **entry: Any) -> None:
    write_atomic(layout.journal, json.dumps({"format": JOURNAL_FORMAT, **entry}).encode())


def clear_journal(layout: Layout) -> None:
    try:
        os.unlink(layout.journal)
    except FileNotFoundError:
        return
    fsync_dir(layout.dir)


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _ino(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


# --------------------------------------------------------------------------------------------
# State snapshots


def snapshot_state(layout: Layout) -> None:
    """Copy the state directory to :attr:`Layout.snapshot` (complete or not at all)."""
    assert layout.state_dir is not None
    state = layout.state_dir
    state.parent.mkdir(parents=True, exist_ok=True)
    _rmtree(layout.snapshot_tmp)
    layout.snapshot_tmp.mkdir(mode=0o700)
    if state.is_dir():
        shutil.copytree(
            state,
            layout.snapshot_tmp / "state",
            symlinks=True,
            ignore=shutil.ignore_patterns(*STATE_EXCLUDE),
        )
    else:
        (layout.snapshot_tmp / "ABSENT").write_bytes(b"")
    _fsync_tree(layout.snapshot_tmp)
    _rmtree(layout.snapshot)
    os.replace(layout.snapshot_tmp, layout.snapshot)
    fsync_dir(state.parent)


def restore_state(layout: Layout, snap: Path) -> None:
    """Put the snapshot ``snap`` back as the state directory (idempotent, kill-safe)."""
    assert layout.state_dir is not None
    state = layout.state_dir
    steps = restore_steps(
        (snap / "state").is_dir(), (snap / "ABSENT").exists(), state.exists()
    )
    for step in steps:
        if step == "discard-live":
            _rmtree(layout.discard)
            os.replace(state, layout.discard)
        elif step == "restore":
            os.replace(snap / "state", state)
            fsync_dir(state.parent)
        else:
            _keep_caches(layout.discard, state)
            _rmtree(snap)
            _rmtree(layout.discard)
    if state.parent.exists():
        fsync_dir(state.parent)


def _keep_caches(old: Path, state: Path) -> None:
    """Carry caches (:data:`STATE_EXCLUDE`, e.g. the verified TUF metadata, whose versions
    protect against rollback attacks) over from the discarded state to the restored one."""
    for name in STATE_EXCLUDE:
        if (old / name).is_dir() and state.is_dir() and not (state / name).exists():
            try:
                os.replace(old / name, state / name)
            except OSError:
                pass  # a cache: losing it costs a fresh download, nothing else


def copy_state_from(layout: Layout, snap: Path) -> None:
    """Make the live state a copy of the snapshot ``snap`` (used by rollback's trial)."""
    assert layout.state_dir is not None
    state = layout.state_dir
    if state.exists():
        _rmtree(layout.discard)
        os.replace(state, layout.discard)
    if (snap / "state").is_dir():
        shutil.copytree(snap / "state", state, symlinks=True)
        _fsync_tree(state)
    _keep_caches(layout.discard, state)
    _rmtree(layout.discard)
    fsync_dir(state.parent)


# --------------------------------------------------------------------------------------------
# Lock


class UpdateLock:
    """Exclusive ``flock`` on ``D/.I.lock``; released by the kernel if the holder dies."""

    def __init__(self, layout: Layout, action: str = "update") -> None:
        self.layout = layout
        self.action = action  # for messages: "update", "roll back"
        self.fd: int | None = None

    def acquire(self, blocking: bool = False) -> bool:
        import fcntl

        try:
            fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise _dir_error(self.layout, e, "lock", self.action) from e
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


def _no_previous_build(installed: Path) -> NoPreviousBuildError:
    return NoPreviousBuildError(
        f"there is no previous build of {installed} to roll back to (one is kept only after "
        "an update)"
    )


def _dir_error(layout: Layout, e: OSError, what: str, action: str = "update") -> InstallError:
    d = layout.dir
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return InstallError(
            f"cannot {action} {layout.installed}: its directory {d} is not writable "
            f"({os.strerror(e.errno)}); run it as a user who may write there"
        )
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return InstallError(
            f"cannot {action} {layout.installed}: no space left in {d} ({what}); free some "
            "space and try again (nothing was changed)"
        )
    return InstallError(
        f"cannot {action} {layout.installed}: {what} failed: {e.strerror or e} "
        f"({getattr(e, 'filename', None) or d}); nothing was changed"
    )


# --------------------------------------------------------------------------------------------
# Bad versions


def read_bad(layout: Layout) -> list[str]:
    try:
        value = json.loads(layout.bad.read_bytes())
    except (FileNotFoundError, ValueError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def add_bad(layout: Layout, version: str) -> None:
    bad = read_bad(layout)
    if version not in bad:
        bad.append(version)
        write_atomic(layout.bad, json.dumps(bad[-50:]).encode())


# --------------------------------------------------------------------------------------------
# Recovery


def recover(layout: Layout) -> str:
    """Finish or undo what a killed updater left behind. Call with the lock held.

    Returns:
        What was done: ``"none"``, ``"undo"`` or ``"finish"``.
    """
    journal = read_journal(layout)
    action = plan_recovery(journal, _ino(layout.installed))
    if action == "none":
        return action
    assert journal is not None
    state_dir = journal.get("state_dir")
    lay = Layout(layout.installed, Path(state_dir) if state_dir else layout.state_dir)
    if action == "undo":
        _undo(lay, journal)
    else:
        _finish(lay, journal)
    return action


def _undo(layout: Layout, journal: dict[str, Any]) -> None:
    if layout.state_dir is not None and layout.snapshot.exists():
        restore_state(layout, layout.snapshot)
    if layout.state_dir is not None:
        _rmtree(layout.snapshot_tmp)
    _unlink(layout.previous_tmp)
    _rmtree(layout.staging)
    clear_journal(layout)


def _finish(layout: Layout, journal: dict[str, Any]) -> None:
    kind = journal.get("kind", "update")
    if kind == "update":
        # The build we replaced becomes "previous", its state the snapshot taken before.
        if layout.previous_tmp.exists():
            write_atomic(layout.previous_version, str(journal.get("old", "")).encode())
            os.replace(layout.previous_tmp, layout.previous)
            fsync_dir(layout.previous_dir)
        if layout.state_dir is not None and layout.snapshot.exists():
            _rmtree(layout.previous_state)
            os.replace(layout.snapshot, layout.previous_state)
            fsync_dir(layout.state_dir.parent)
    else:
        # Rollback: the build rolled back from is remembered as bad; nothing is kept as previous.
        if journal.get("old"):
            add_bad(layout, str(journal["old"]))
        _rmtree(layout.previous_dir)
        if layout.state_dir is not None:
            _rmtree(layout.snapshot)
            _rmtree(layout.previous_state)
    _rmtree(layout.staging)
    fsync_dir(layout.dir)
    clear_journal(layout)


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
        before = _ino(installed)
        recover(layout)
        return _ino(installed) != before
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------
# The update


def checkpoint(name: str) -> None:
    """A named point of the flow where the crash-consistency tests stop the updater.

    With ``SELFUPDATE_TEST_STOP_AT=NAME`` in the environment the process stops itself
    (``SIGSTOP``) there, so a test can ``SIGKILL`` it at exactly that instant. Costs one
    dictionary lookup otherwise.
    """
    if os.environ.get("SELFUPDATE_TEST_STOP_AT") == name:
        os.kill(os.getpid(), signal.SIGSTOP)


#: Every checkpoint, in the order the flow passes them.
CHECKPOINTS = (
    "locked", "download", "downloaded", "snapshot", "trial", "trial-done", "switch",
    "linked", "replaced", "committed", "handover",
)


@dataclass
class Outcome:
    """What :func:`update` did (returned only when no handover happened)."""

    status: str  # "up-to-date", "updated", "available"
    old: str
    new: str | None = None
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _DownloadFile(io.FileIO):
    """The staged file, unbuffered: every ``write`` reaches the kernel whole (short writes are
    continued), so a full disk fails the write that hit it, not a later flush, and a partial
    download can always be truncated."""

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view):
            n = super().write(view[done:])
            if not n:
                raise OSError(errno.EIO, "short write to the download file")
            done += n
        return done


class _Durable:
    """The staged file's ``fsync``, started in a thread right after the download so the disk
    writes it while the state snapshot, the extraction seeding and the trial run (they need
    only the page cache); :meth:`wait` finishes it before the commit point. Holds a duplicate
    of the download's file descriptor (close-on-exec: the trial does not inherit it)."""

    def __init__(self, fd: int) -> None:
        import threading

        self._fd = os.dup(fd)
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="fsync-staged", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as e:
            self._error = e

    def wait(self) -> None:
        """Return once the staged file is on disk (data, size and mode); raise its OSError."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        os.fsync(self._fd)  # what changed since the first fsync (the mode): cheap

    def close(self) -> None:
        self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _stage_download(
    layout: Layout, client: ClientLike, release: Any, mode: int
) -> tuple[int, _Durable]:
    """Download into the staged file; return its inode and its :class:`_Durable` (``wait()``
    before the switch, ``close()`` always)."""
    _rmtree(layout.staging)
    try:
        layout.staging.mkdir(mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(layout.staged, flags, 0o600)
    except OSError as e:
        raise _dir_error(layout, e, "creating the download file") from e
    durable: _Durable | None = None
    try:
        try:
            with _DownloadFile(fd, "wb") as f:
                client.download_to(release, f)
                size = os.fstat(f.fileno()).st_size
                durable = _Durable(f.fileno())
        except OSError as e:
            raise _dir_error(layout, e, "download") from e
        expected = getattr(release, "length", None)
        if isinstance(expected, int) and size != expected:
            raise InstallError(
                f"cannot update {layout.installed}: the download file has {size} bytes, not "
                f"the {expected} that were verified; nothing was changed, try again"
            )
        os.chmod(layout.staged, mode)
        fsync_dir(layout.staging)
        return os.stat(layout.staged).st_ino, durable
    except BaseException:
        if durable is not None:
            durable.close()
        _rmtree(layout.staging)
        raise


def run_trial(
    program: Path,
    old: str,
    new: str,
    log_path: Path,
    timeout: float,
    env: dict[str, str] | None = None,
) -> str | None:
    """Run ``program`` as ``post-update OLD NEW``; return None on success, else what failed.

    The child runs in its own session, so a hung trial is killed with everything it started.
    Its stdout and stderr go to ``log_path``.
    """
    import reexec_core

    cmd = reexec_core.command(TRIAL_ENTRY, old, new, program=program)
    if env:
        cmd.env.update(env)
    with open(log_path, "wb") as log:
        log.write(f"# {program} post-update {old} {new}\n".encode())
        log.flush()
        try:
            proc = cmd.popen(
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            return f"could not be started ({e.strerror})"
        checkpoint("trial")
        try:
            status = _wait(proc, timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            return f"did not finish its migration and health check within {timeout:g} seconds"
        finally:
            _kill_group(proc.pid)
    if status == 0:
        return None
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name} during its migration and health check"
    if status == 127:
        return "exited with status 127 (it does not know the post-update entry point)"
    return f"exited with status {status} during its migration and health check"


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """``proc.wait(timeout)`` without its polling (sleeps of up to 50 ms between checks, i.e.
    up to 50 ms lost after the trial ended): block on a pidfd until the child exits."""
    import select

    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout=timeout)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    return proc.wait()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def update(
    installed: Path,
    client: ClientLike,
    current_version: str,
    state_dir: Path | None,
    *,
    check_only: bool = False,
    trial_timeout: float = 60.0,
    handover: Callable[[str, str, Path], None] | None = None,
    say: Callable[[str], None] | None = None,
    trial_env: dict[str, str] | None = None,
) -> Outcome:
    """Update the installed file in place to the newest release (see the module docstring).

    Args:
        installed: the installed ``.pyz`` (real path, not a symlink).
        client: ``UpdateClient`` (or anything with its ``check``/``download_to``).
        current_version: the running build's version.
        state_dir: the app's state directory (snapshotted, restored on failure).
        check_only: only report what is available.
        trial_timeout: seconds the trial may take.
        handover: called after the commit with (old, new, log path) with the lock released;
            normally it ``exec``s the new build and does not return.
        say: progress messages (one line each) for a terminal.
        trial_env: extra environment for the trial child.

    Returns:
        The outcome (when ``handover`` returned or was not given).

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
        bad = newest_is_bad(release.version, read_bad(layout))
        return Outcome("available", current_version, release.version, extra={"bad": bad})
    lock = UpdateLock(layout)
    with lock:
        checkpoint("locked")
        recover(layout)
        release = client.check(current_version)
        if release is None:
            return Outcome("up-to-date", current_version)
        new = str(release.version)
        if newest_is_bad(new, read_bad(layout)):
            raise KnownBadError(
                f"{new} failed its trial run before (log: {layout.log}); it is not tried "
                "again until a newer release is published",
                new,
            )
        mode = os.stat(installed).st_mode & 0o7777
        try:
            write_journal(layout, phase="download", kind="update", old=current_version, new=new,
                          state_dir=str(state_dir) if state_dir else None)
        except OSError as e:
            raise _dir_error(layout, e, "writing the update journal") from e
        durable: _Durable | None = None
        try:
            note(f"downloading {new} ...")
            checkpoint("download")
            ino, durable = _stage_download(layout, client, release, mode)
            checkpoint("downloaded")
            write_journal(layout, phase="trial", kind="update", old=current_version, new=new,
                          state_dir=str(state_dir) if state_dir else None, candidate_ino=ino)
            if state_dir is not None:
                try:
                    snapshot_state(layout)
                except OSError as e:
                    raise InstallError(
                        f"cannot update {installed}: saving a copy of the state directory "
                        f"{state_dir} failed ({e.strerror or e}); nothing was changed"
                    ) from e
            checkpoint("snapshot")
            try:
                seed_extraction(installed, layout.staged)
            except Exception:  # noqa: BLE001 - zipfile raises several kinds
                pass  # only an optimisation: shiv extracts the build itself in the trial
            note(f"trying {new} (migrations and health check) ...")
            failure = run_trial(layout.staged, current_version, new, layout.log,
                                trial_timeout, trial_env)
            checkpoint("trial-done")
            if failure is None:
                try:
                    durable.wait()  # the staged file is on disk before it can be committed
                except OSError as e:
                    raise _dir_error(layout, e, "download") from e
        except BaseException:
            if durable is not None:
                durable.close()
            _undo(layout, {})
            raise
        durable.close()
        if failure is not None:
            _undo(layout, {})
            try:
                add_bad(layout, new)
            except OSError:
                pass
            raise TrialFailedError(
                f"the new build {new} {failure}, so it was not installed and {current_version} "
                f"stays, with its state restored; see its log: {layout.log}",
                new,
                layout.log,
            )
        _switch(layout, current_version, new, ino, kind="update")
    if handover is not None:
        checkpoint("handover")
        handover(current_version, new, layout.log)
    return Outcome("updated", current_version, new, layout.log)


def _switch(layout: Layout, old: str, new: str, ino: int, kind: str) -> None:
    """The commit: journal, keep the old build, one ``os.replace``, ``fsync``, bookkeeping."""
    sd = str(layout.state_dir) if layout.state_dir else None
    journal = dict(kind=kind, old=old, new=new, state_dir=sd, candidate_ino=ino)
    try:
        write_journal(layout, phase="switch", **journal)
        checkpoint("switch")
        if kind == "update":
            layout.previous_dir.mkdir(mode=0o700, exist_ok=True)
            _unlink(layout.previous_tmp)
            os.link(layout.installed, layout.previous_tmp)
            checkpoint("linked")
            candidate = layout.staged
        else:
            candidate = layout.previous
        os.replace(candidate, layout.installed)  # the commit point
        checkpoint("replaced")
        fsync_dir(layout.dir)
    except OSError as e:
        _undo(layout, journal)
        raise _dir_error(layout, e, "switching to the new build") from e
    write_journal(layout, phase="committed", **journal)
    checkpoint("committed")
    _finish(layout, {"phase": "committed", **journal})


# --------------------------------------------------------------------------------------------
# Rollback


def rollback(
    installed: Path,
    current_version: str,
    state_dir: Path | None,
    *,
    trial_timeout: float = 60.0,
    trial_env: dict[str, str] | None = None,
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
        raise _no_previous_build(installed)
    with UpdateLock(layout, "roll back"):
        recover(layout)
        if not layout.previous.exists():
            raise _no_previous_build(installed)
        try:
            prev = layout.previous_version.read_text().strip() or "previous"
        except FileNotFoundError:
            prev = "previous"
        ino = os.stat(layout.previous).st_ino
        sd = str(state_dir) if state_dir else None
        try:
            write_journal(layout, phase="trial", kind="rollback", old=current_version, new=prev,
                          state_dir=sd, candidate_ino=ino)
        except OSError as e:
            raise _dir_error(layout, e, "writing the journal", "roll back") from e
        try:
            if state_dir is not None:
                snapshot_state(layout)
                if layout.previous_state.exists():
                    copy_state_from(layout, layout.previous_state)
            failure = run_trial(layout.previous, current_version, prev, layout.log,
                                trial_timeout, trial_env)
        except OSError as e:
            _undo(layout, {})
            raise _dir_error(layout, e, "preparing the rollback", "roll back") from e
        except BaseException:
            _undo(layout, {})
            raise
        if failure is not None:
            _undo(layout, {})
            raise TrialFailedError(
                f"the previous build {prev} {failure}, so it was not put back and "
                f"{current_version} stays; see its log: {layout.log}",
                prev,
                layout.log,
            )
        _switch(layout, current_version, prev, ino, kind="rollback")
    return prev


# --------------------------------------------------------------------------------------------
# shiv extraction directories


def shiv_root() -> Path:
    """Where shiv extracts builds: ``$SHIV_ROOT`` or ``~/.shiv`` (as shiv's bootstrap decides)."""
    root = os.environ.get("SHIV_ROOT")
    return Path(root).expanduser() if root else Path("~/.shiv").expanduser()


def shiv_build_id(pyz: Path) -> str | None:
    """The build id shiv recorded in a ``.pyz`` (None if it is not a shiv archive)."""
    import zipfile

    try:
        with zipfile.ZipFile(pyz) as zf:
            env = json.loads(zf.read("environment.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    build_id = env.get("build_id") if isinstance(env, dict) else None
    return build_id if isinstance(build_id, str) else None


def _shiv_env(zf: Any) -> dict[str, Any]:
    env = json.loads(zf.read("environment.json"))
    if not isinstance(env, dict):
        raise ValueError("environment.json is not an object")
    return env


def seed_extraction(old: Path, new: Path, root: Path | None = None) -> Path | None:
    """Prepare shiv's extraction of the build ``new`` from the extraction of ``old``.

    A new build mostly carries the same dependencies as the old one. shiv would decompress
    all of them again on the new build's first start (the trial); instead, every file of the
    new archive's ``site-packages`` whose name, CRC-32 and size equal those of the old
    archive's entry is hard-linked from the old extraction (which the running old build
    made), and only the rest is extracted. The result is renamed into place under shiv's own
    extraction lock, so shiv finds it complete and skips extraction, or extracts itself.

    Both archives have the same base name (the staged file is named like the installed one).

    Returns:
        The extraction directory made, or None when there was nothing to do (no old
        extraction, same build, already extracted, a build with its own shiv root).
    """
    import fcntl
    import zipfile

    root = root or shiv_root()
    if not (zipfile.is_zipfile(old) and zipfile.is_zipfile(new)):
        return None
    with zipfile.ZipFile(old) as zo, zipfile.ZipFile(new) as zn:
        env_old, env_new = _shiv_env(zo), _shiv_env(zn)
        old_id, new_id = env_old.get("build_id"), env_new.get("build_id")
        if env_new.get("root") or not old_id or not new_id or old_id == new_id:
            return None
        target = root / f"{new.name}_{new_id}"
        old_sp = root / f"{old.name}_{old_id}" / "site-packages"
        if target.exists() or not old_sp.is_dir():
            return None
        same = {
            i.filename: i for i in zo.infolist() if i.filename.startswith("site-packages/")
        }
        tmp = root / f".{new.name}_{new_id}.seed-{os.getpid()}"
        _rmtree(tmp)
        try:
            for info in zn.infolist():
                name = info.filename
                if not name.startswith("site-packages/") or ".." in name.split("/"):
                    continue
                dest = tmp / name
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                o = same.get(name)
                src = root / f"{old.name}_{old_id}" / name
                if o is not None and o.CRC == info.CRC and o.file_size == info.file_size:
                    try:
                        if src.stat().st_size == info.file_size:
                            dest.parent.mkdir(parents=True, exist_ok=True)
                            os.link(src, dest)
                            if name.endswith(".py"):
                                _link_pyc(src, dest)
                            continue
                    except OSError:
                        pass
                if not _copy_stored(new, info, dest):
                    zn.extract(info, tmp)
                os.chmod(dest, (info.external_attr >> 16) or 0o644)
            # shiv's extraction lock (fcntl.flock, as in shiv's bootstrap/filelock.py): shiv
            # either sees our complete directory or extracts into its own .tmp first.
            fd = os.open(root / f".{new.name}_{new_id}_lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if target.exists():
                    return None
                os.replace(tmp, target)
            finally:
                os.close(fd)
        finally:
            _rmtree(tmp)
    return target


def _link_pyc(src: Path, dest: Path) -> None:
    """Hard-link the old extraction's bytecode of ``src`` beside its link ``dest``, so the new
    build does not compile again what the old one compiled. Python still checks it against
    the source's mtime and size, which a hard link shares: a stale file is just recompiled."""
    import sys

    tag = sys.implementation.cache_tag
    if tag is None:
        return
    pyc = f"{src.stem}.{tag}.pyc"
    old = src.parent / "__pycache__" / pyc
    try:
        if old.is_file():
            (dest.parent / "__pycache__").mkdir(exist_ok=True)
            os.link(old, dest.parent / "__pycache__" / pyc)
    except OSError:
        pass


def _copy_stored(archive: Path, info: Any, dest: Path) -> bool:
    """Copy a big *stored* (uncompressed) archive entry with ``copy_file_range``: the kernel
    copies page cache to page cache, no reads into Python, no CRC pass (the whole archive's
    signed SHA-256 was verified by the download). False: not such an entry, extract normally."""
    import struct
    import zipfile

    if (info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1
            or info.file_size < (1 << 20) or not hasattr(os, "copy_file_range")):
        return False
    with open(archive, "rb") as src:
        src.seek(info.header_offset)
        header = src.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            return False
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        offset = info.header_offset + 30 + name_len + extra_len
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            left = info.file_size
            while left:
                n = os.copy_file_range(src.fileno(), fd, left, offset)
                if n <= 0:
                    raise OSError(errno.EIO, f"short copy of {info.filename}")
                offset += n
                left -= n
        except BaseException:
            os.close(fd)
            os.unlink(dest)
            raise
        os.close(fd)
    return True


def _used_by_a_process(path: Path) -> bool:
    """True if any process we can see maps, runs in, holds open or names ``path``."""
    prefix = str(path) + "/"
    me = os.getpid()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return True  # cannot tell: keep it
    for pid in pids:
        if int(pid) == me:
            continue
        base = f"/proc/{pid}"
        try:
            with open(f"{base}/cmdline", "rb") as f:
                # A reexec fast child carries the extraction directory in its sys.path literal.
                if str(path).encode() in f.read():
                    return True
        except OSError:
            continue
        try:
            with open(f"{base}/maps") as f:
                if prefix in f.read():
                    return True
        except OSError:
            pass
        try:
            if (os.readlink(f"{base}/cwd") + "/").startswith(prefix):
                return True
        except OSError:
            pass
        try:
            for fd in os.listdir(f"{base}/fd"):
                try:
                    if os.readlink(f"{base}/fd/{fd}").startswith(prefix):
                        return True
                except OSError:
                    continue
        except OSError:
            pass
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_shiv_dirs(keep: list[Path], name: str, root: Path | None = None) -> list[Path]:
    """Remove shiv extraction directories of builds of ``name`` that are no longer installed.

    A directory ``ROOT/NAME_BUILDID`` is removed only if its build id is not one of the builds in
    ``keep`` (installed and previous), nobody holds its in-use lock (taken at start by
    :func:`selfupdate.app.at_start`), and no visible process maps a file in it, runs in it,
    holds one open or names it on its command line. It is renamed away under the exclusive
    lock before being deleted, so a process starting that build afterwards gets a fresh
    extraction from shiv.

    Returns:
        The directories removed.
    """
    import fcntl
    import re

    root = root or shiv_root()
    keep_ids = {i for i in (shiv_build_id(p) for p in keep if p.exists()) if i}
    pattern = re.compile(re.escape(name) + r"_([0-9a-f]{64})")
    removed: list[Path] = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return removed
    leftover = re.compile(r"\." + re.escape(name) + r"_[0-9a-f]{64}\.(?:seed|removing)-(\d+)")
    for entry in entries:
        m = leftover.fullmatch(entry)
        if m is not None and not _alive(int(m.group(1))):
            # A seed or removal cut short by a kill: nobody uses a half-made directory.
            shutil.rmtree(root / entry, ignore_errors=True)
            removed.append(root / entry)
            continue
        m = pattern.fullmatch(entry)
        if m is None or m.group(1) in keep_ids:
            continue
        d = root / entry
        try:
            fd = os.open(d / INUSE_LOCK, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a running process holds it
            if _used_by_a_process(d):
                continue
            gone = root / f".{entry}.removing-{os.getpid()}"
            try:
                os.replace(d, gone)
            except OSError:
                continue
            shutil.rmtree(gone, ignore_errors=True)
            _unlink(root / f".{entry}_lock")
            removed.append(d)
        finally:
            os.close(fd)
    return removed

