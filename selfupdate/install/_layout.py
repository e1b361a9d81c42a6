"""Where the installer keeps things beside one installed file, and the errors about them.

For the installed file ``D/I`` and the app's state directory ``S/state``::

    D/.I.lock                 the update lock (flock)
    D/.I.journal              the running transaction's journal
    D/.I.bad                  versions held (rolled back from) or failed (their trial), one
                              JSON object per line
    D/.I.channel              the channel `update --channel` switched to
    D/.I.update/I             the staged download (same base name: shiv names its extraction
                              directory after it, so the trial extracts where I will)
    D/.I.previous/I           the build before the last update (for rollback), and its version
    D/.I.post-update.log      the last trial's output
    D/.I.state/               copies of the app's state (0700; out of the trial's reach):
        snapshot/             the state before the running transaction (``state/`` holding
                              a copy of every entry of S/state, or the marker ``ABSENT``)
        previous/             the state matching the previous build (same format)
    S/state/.selfupdate/      the installer's room in the state directory, only while a
                              snapshot is put back (0700; never part of a snapshot, never
                              discarded by a restore):
        incoming/             a copy of the snapshot, whose entries are renamed into place
        discard/              live entries moved aside while a snapshot is put back

The copies live in the install directory, not in the state directory the trial hands to the
migrations: a migration that removes the whole state directory and then fails cannot take
the copy it is undone from with it (issue 11). Nothing else above the state directory is
written: a service whose state directory is its own but whose parent is root's (systemd's
``StateDirectory=``, ``/var/lib`` 0755 root) updates and rolls back; a state directory that
does not exist is not created by the updater. Two older layouts are still honoured, since the
first update to this version is made by the older one and rolling back from it needs the
state it kept: ``S/.state.snapshot`` and ``S/.state.previous`` beside the state directory
(:attr:`Layout.legacy_snapshot`, :attr:`Layout.legacy_previous_state`), and
``S/state/.selfupdate/{snapshot,previous}`` (:attr:`Layout.inside_snapshot`,
:attr:`Layout.inside_previous_state`).

Trust (issue 9): the installer uses a directory only when it belongs to the effective user or
root and no other user may write to it (:func:`untrusted_dir`): in a directory others can
write, any name not created yet could be theirs (a symlinked log, a planted previous build, a
forged journal), so the updater refuses such a directory in one sentence instead of guarding
each name. Inside a trusted directory it still creates every file 0600 (directories 0700),
opens side files with ``O_NOFOLLOW``, and reads the journal and the list of bad versions only
from regular files that the effective user or root owns and nobody else may write
(:func:`read_side`: ``lstat``, then ``O_NONBLOCK`` open and ``fstat``, so a FIFO never blocks).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from selfupdate.errors import InstallError, NoPreviousBuildError

__all__ = [
    "STATE_EXCLUDE",
    "STATE_RESERVED",
    "Layout",
    "UntrustedFile",
    "check_dirs",
    "dir_error",
    "inode",
    "no_previous_build",
    "previous_build",
    "read_side",
    "remove",
    "untrusted_dir",
]

#: Names in the state directory that are caches, not state: neither snapshotted nor restored.
#: ``install-id`` (a phased rollout's placement) is neither: a rollback must not re-roll it.
STATE_EXCLUDE = ("tuf-cache", "install-id")

#: The one name in the state directory that belongs to the installer (its snapshots): an app
#: must not use it; it is neither snapshotted nor restored nor discarded.
STATE_RESERVED = ".selfupdate"


@dataclass(frozen=True)
class Layout:
    """Every path the installer uses for one installed file and one state directory."""

    installed: Path
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        # A symlinked state directory stays a symlink: snapshots and restores work on the
        # directory it names (its side files go beside that directory), never on the link.
        if self.state_dir is not None:
            object.__setattr__(self, "state_dir", Path(os.path.realpath(self.state_dir)))

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
    def channel(self) -> Path:
        """The channel ``update --channel`` switched to (one line), if any."""
        return self._side("channel")

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

    def _state(self) -> Path:
        if self.state_dir is None:
            raise RuntimeError("this layout has no state directory")
        return self.state_dir

    @property
    def saved_states(self) -> Path:
        """Where the copies of the state are kept: in the install directory, beyond the
        trial's reach (``D/.I.state``)."""
        return self._side("state")

    @property
    def snapshot(self) -> Path:
        """State as it was before the running transaction (format: ``state/`` or ``ABSENT``)."""
        return self.saved_states / "snapshot"

    @property
    def snapshot_tmp(self) -> Path:
        return self.saved_states / "snapshot.tmp"

    @property
    def previous_state(self) -> Path:
        """State matching the previous build (same format as :attr:`snapshot`)."""
        return self.saved_states / "previous"

    @property
    def state_private(self) -> Path:
        """The installer's room inside the state directory (:data:`STATE_RESERVED`), used
        while a snapshot is put back."""
        return self._state() / STATE_RESERVED

    @property
    def incoming(self) -> Path:
        """A complete copy of the snapshot being put back, inside the state directory (one
        filesystem, so its entries are renamed into place)."""
        return self.state_private / "incoming"

    @property
    def incoming_tmp(self) -> Path:
        return self.state_private / "incoming.tmp"

    @property
    def discard(self) -> Path:
        return self.state_private / "discard"

    @property
    def inside_snapshot(self) -> Path:
        """Where the first layout of issue 11 kept :attr:`snapshot`: in the state directory."""
        return self.state_private / "snapshot"

    @property
    def inside_previous_state(self) -> Path:
        """Where the first layout of issue 11 kept :attr:`previous_state`."""
        return self.state_private / "previous"

    @property
    def leftovers(self) -> tuple[Path, ...]:
        """What an interrupted restore (this layout's or the first one of issue 11) can leave
        in the installer's room: garbage once no restore is under way."""
        p = self.state_private
        return (self.incoming_tmp, p / "incoming.dropped", p / "snapshot.tmp",
                p / "snapshot.dropped", self.discard)

    def _legacy(self, suffix: str) -> Path:
        state = self._state()
        return state.parent / f".{state.name}.{suffix}"

    @property
    def legacy_snapshot(self) -> Path:
        """Where versions before issue 11 kept :attr:`snapshot`: beside the state directory."""
        return self._legacy("snapshot")

    @property
    def legacy_previous_state(self) -> Path:
        """Where versions before issue 11 kept :attr:`previous_state`."""
        return self._legacy("previous")

    @property
    def legacy_leftovers(self) -> tuple[Path, ...]:
        """What else versions before issue 11 could leave beside the state directory."""
        return (self._legacy("snapshot.tmp"), self._legacy("discard"))


def remove(path: Path) -> None:
    """Remove a file, symlink or directory tree at ``path``; nothing there is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def inode(path: Path) -> int | None:
    """The inode number of ``path`` (following symlinks), None if it does not exist."""
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def no_previous_build(installed: Path) -> NoPreviousBuildError:
    return NoPreviousBuildError(
        f"there is no previous build of {installed} to roll back to (one is kept only after "
        "an update)"
    )


def dir_error(layout: Layout, e: OSError, what: str, action: str = "update") -> InstallError:
    """One sentence for an OS error in the installed file's directory, with a fix that fits."""
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
# Trust: who owns a directory or side file, who else may write it


def _foreign(st: os.stat_result) -> str | None:
    """Why a file or directory with this ``stat`` is not to be trusted, or None."""
    euid = os.geteuid()
    if st.st_uid not in (euid, 0):
        return f"belongs to user {st.st_uid}, not to you (user {euid}) or root"
    if st.st_mode & 0o022:
        return f"may be written by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def untrusted_dir(path: Path) -> str | None:
    """Why the directory ``path`` must not be used, or None (also when it does not exist:
    the caller's own error handling says that). Symlinks in ``path`` are followed: the
    directory that counts is the one the files land in."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _foreign(st)


def _unwritable(path: Path) -> str | None:
    """Why this user cannot create names in the directory ``path``, or None."""
    # The effective user's access, as the writes will have (access(2) alone checks the real one).
    if os.access(path, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return None
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "is on a read-only file system"
    except OSError:
        pass
    return f"is not writable by this user (uid {os.geteuid()})"


def check_dirs(layout: Layout, action: str = "update") -> None:
    """Refuse, in one sentence naming the path and the fix, a directory the transaction would
    use that another user could write to, or a state directory it could not write: called
    before anything is downloaded or written.

    * the install directory ``D``: trusted (its writability is tested by the lock, the
      transaction's first write, also before any download);
    * the copies of the state ``D/.I.state``, if there: a real directory that is trusted;
    * the state directory ``S``, when it exists: a directory, trusted, writable by this user,
      and its :data:`STATE_RESERVED` directory, if there, a real directory that is trusted;
    * when ``S`` does not exist: the nearest existing directory above it, where the new
      build's migrations will create it, trusted and writable. ``S.parent`` matters only
      then (issue 11).

    Raises:
        InstallError: one of those does not hold.
    """
    head = f"cannot {action} {layout.installed}:"
    why = untrusted_dir(layout.dir)
    if why is not None:
        raise InstallError(
            f"{head} its directory {layout.dir} {why}, who could plant the files kept beside "
            "it; move it to a directory that only you or root can write"
        )
    if layout.state_dir is None:
        return
    _check_own_dir(layout.saved_states, head, "beside it")
    state = layout.state_dir
    try:
        st: os.stat_result | None = os.stat(state)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise InstallError(
            f"{head} its state directory {state} cannot be examined ({e.strerror}); run it as "
            "the user the state directory belongs to"
        ) from e
    if st is None:
        above = state.parent
        while not above.exists() and above != above.parent:
            above = above.parent
        why = untrusted_dir(above)
        if why is not None:
            raise InstallError(
                f"{head} its state directory {state} does not exist and would be created in "
                f"{above}, which {why}; create {state} yourself (mode 0700)"
            )
        why = _unwritable(above)
        if why is not None:
            raise InstallError(
                f"{head} its state directory {state} does not exist and cannot be created, as "
                f"{above} {why}; create {state} owned by the user who runs the update"
            )
        return
    if not stat.S_ISDIR(st.st_mode):
        raise InstallError(
            f"{head} its state directory {state} is {_kind(st.st_mode)}, not a directory; "
            "remove it or point the app at a directory"
        )
    why = _foreign(st)
    if why is not None:
        raise InstallError(
            f"{head} its state directory {state} {why}, who could plant the files kept in "
            "it; make it a directory that only you or root can write"
        )
    why = _unwritable(state)
    if why is not None:
        raise InstallError(
            f"{head} its state directory {state} {why}, and the update puts the state back "
            "there if a trial fails; make it the service user's own (systemd: "
            "StateDirectory=) or run the update as its owner"
        )
    _check_own_dir(layout.state_private, head, "in its state")


def _check_own_dir(path: Path, head: str, where: str) -> None:
    """Refuse a directory of the updater's own that is not a real directory this user or
    root owns and nobody else may write (absent is fine: it is created 0700)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise InstallError(
            f"{head} {path} cannot be examined ({e.strerror}); run it as the user the "
            "directory belongs to"
        ) from e
    why = f"is {_kind(st.st_mode)}" if not stat.S_ISDIR(st.st_mode) else _foreign(st)
    if why is not None:
        raise InstallError(
            f"{head} the updater's directory {path} {where} {why}, so it is not used; "
            "remove it if you did not make it"
        )


class UntrustedFile(Exception):
    """A side file that is not a regular file the right user owns (internal: becomes a
    one-line note, the file is ignored)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"ignoring {path}: it {reason}")
        self.path = path
        self.reason = reason


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a device"


def read_side(path: Path, limit: int = 1 << 20) -> bytes | None:
    """The bytes of the side file ``path`` (at most ``limit``), None when there is none.

    Never blocks and never follows a link: ``lstat`` first, then an ``O_NOFOLLOW|O_NONBLOCK``
    open whose ``fstat`` must be the same regular file.

    Raises:
        UntrustedFile: not a regular file, owned by another user, writable by others.
        OSError: it cannot be read (permissions, I/O).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedFile(path, f"is {_kind(st.st_mode)}, not a regular file")
    why = _foreign(st)
    if why is not None:
        raise UntrustedFile(path, why)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UntrustedFile(path, "is a symbolic link, not a regular file") from e
        raise
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
            raise UntrustedFile(path, "was replaced while it was being read")
        chunks, total = [], 0
        while total < limit and (data := os.read(fd, min(1 << 16, limit - total))):
            chunks.append(data)
            total += len(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


def previous_build(layout: Layout, action: str = "roll back") -> Path | None:
    """The kept previous build, or None; only a directory we (or root) own that nobody else
    may write, holding a regular file.

    Raises:
        InstallError: it is there but cannot be read by this user, or is not to be trusted.
    """
    try:
        dst = os.lstat(layout.previous_dir)
        if not stat.S_ISDIR(dst.st_mode):
            why: str | None = f"is {_kind(dst.st_mode)}, not a directory"
        else:
            why = _foreign(dst)
        if why is None:
            fst = os.lstat(layout.previous)
            if not stat.S_ISREG(fst.st_mode):
                why = f"holds {_kind(fst.st_mode)} at {layout.previous}, not a build"
            else:
                why = _foreign(fst)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InstallError(
            f"cannot {action} {layout.installed}: its previous build in {layout.previous_dir} "
            f"cannot be read by this user ({e.strerror}); run it as the user who updated it"
        ) from e
    if why is not None:
        raise InstallError(
            f"cannot {action} {layout.installed}: the previous build directory "
            f"{layout.previous_dir} {why}, so it is not used; remove it if you did not make it"
        )
    return layout.previous
