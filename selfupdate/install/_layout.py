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
    S/.state.snapshot         the state before the running transaction
    S/.state.previous         the state matching the previous build

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
STATE_EXCLUDE = ("tuf-cache",)


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


def check_dirs(layout: Layout, action: str = "update") -> None:
    """Refuse, in one sentence, an install or state directory another user could write to.

    Raises:
        InstallError: the directory (or the state directory, or its parent) is not trusted.
    """
    dirs = [("its directory", layout.dir)]
    if layout.state_dir is not None:
        dirs += [("its state directory", layout.state_dir),
                 ("the directory of its state", layout.state_dir.parent)]
    for what, d in dirs:
        why = untrusted_dir(d)
        if why is not None:
            raise InstallError(
                f"cannot {action} {layout.installed}: {what} {d} {why}, who could plant the "
                "files kept beside it; move it to a directory that only you or root can write"
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
