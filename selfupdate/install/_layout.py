"""Where the installer keeps things beside one installed file, and the errors about them.

For the installed file ``D/I`` and the app's state directory ``S/state``::

    D/.I.lock                 the update lock (flock)
    D/.I.journal              the running transaction's journal
    D/.I.bad                  versions that failed their trial or were rolled back from
    D/.I.update/I             the staged download (same base name: shiv names its extraction
                              directory after it, so the trial extracts where I will)
    D/.I.previous/I           the build before the last update (for rollback), and its version
    D/.I.post-update.log      the last trial's output
    S/.state.snapshot         the state before the running transaction
    S/.state.previous         the state matching the previous build
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from selfupdate.errors import InstallError, NoPreviousBuildError

__all__ = ["STATE_EXCLUDE", "Layout", "dir_error", "inode", "no_previous_build", "remove"]

#: Names in the state directory that are caches, not state: neither snapshotted nor restored.
STATE_EXCLUDE = ("tuf-cache",)


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
