"""Durable file replacement, shared by the publisher, the installer and the conformance client.

A crash (``kill -9``, power loss) at any instant leaves the old file or the new one, never a
mix: the data goes to a temporary file in the same directory (same filesystem, so the rename
is atomic), is ``fsync``'d, renamed over the target with ``os.replace``, and then the
directory is ``fsync``'d so that the rename itself survives a power loss (rename(2) alone
is not durable; see fsync(2), "Calling fsync() does not necessarily ensure that the entry in
the directory containing the file has also reached disk").
"""

from __future__ import annotations

import os
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

__all__ = ["fsync_dir", "fsync_tree", "write_atomic", "write_atomic_from"]


def fsync_dir(path: Path) -> None:
    """``fsync`` the directory ``path`` so that new names and renames in it are durable.

    Raises:
        OSError: ``path`` cannot be opened as a directory.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """``fsync`` every regular file and directory under ``root`` (symlinks are not followed).

    Raises:
        OSError: a file or directory cannot be opened or synced.
    """
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


def write_atomic_from(path: Path, write: Callable[[BinaryIO], object], mode: int = 0o644) -> None:
    """Replace ``path`` with what ``write`` writes to the file object it is given.

    The temporary file is created exclusively (``mkstemp``: ``O_EXCL``, so a symlink planted
    under its name is never followed) with a unique name, so two writers never share one.
    ``mode`` is set explicitly, independent of the umask.

    Raises:
        OSError: the directory is not writable, the disk is full, ...; and whatever ``write``
            raises. In every case ``path`` is left as it was and the temporary file is removed.
    """
    import tempfile  # not at module level: the installer imports this module at every start

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (see :func:`write_atomic_from`)."""
    write_atomic_from(path, lambda f: f.write(data), mode)
