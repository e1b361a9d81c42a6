"""Everything selfupdate knows about shiv, in one place.

shiv (linkedin/shiv) runs a ``.pyz`` by extracting its ``site-packages`` once into
``ROOT/NAME_BUILDID/site-packages`` (``ROOT``: ``$SHIV_ROOT`` or ``~/.shiv``; ``NAME``: the
archive's file name; ``BUILDID``: from the archive's ``environment.json``) and never removes an
extraction. This module knows that layout and nothing else does:

- :func:`running_archive` (:func:`running_archive_path`) and :func:`running_extraction`: the
  ``.pyz`` this process runs from and its extraction directory, detected once per process;
- :func:`build_id`: the build id a ``.pyz`` records (the one reader of ``environment.json``);
- :func:`hold_extraction`: the in-use lock a running build holds on its extraction;
- :mod:`._trust`: whether ``SHIV_ROOT`` and an extraction belong to this user (the one check
  the start hook, the seeding and the cleaning use: nothing is created, opened or run in a
  directory another user can write);
- :func:`._seed.seed_extraction`: a new build's extraction prepared from the old
  one's (hard links);
- :func:`._clean.clean_shiv_dirs`: removal of extractions of builds no longer
  installed and unused.

This ``__init__`` is what the app-start hook needs at every start, and nothing more: shiv's
bootstrap writes no bytecode, so every start compiles the source it imports. The seeding and
the cleaning, needed only around an update, are its submodules.
"""

from __future__ import annotations

import os
import sys

from selfupdate._names import INUSE_LOCK
from selfupdate._shiv._trust import UntrustedDirectoryError, open_private_lock, private_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

__all__ = [
    "UntrustedDirectoryError",
    "build_id",
    "extraction_root",
    "hold_extraction",
    "open_private_lock",
    "running_archive",
    "running_archive_path",
    "running_extraction",
    "shiv_root",
]

_UNKNOWN: Any = object()
_archive: Any = _UNKNOWN  # running_archive_path(), once detected
_inuse_fd: int | None = None  # the shared lock hold_extraction() took


def shiv_root() -> Path:
    """Where shiv extracts builds: ``$SHIV_ROOT`` or ``~/.shiv`` (as shiv's bootstrap decides)."""
    from pathlib import Path

    root = os.environ.get("SHIV_ROOT")
    return Path(root).expanduser() if root else Path("~/.shiv").expanduser()


def extraction_root(env: dict[str, Any]) -> Path:
    """The root shiv's bootstrap extracts an archive with this ``environment.json`` into:
    ``$SHIV_ROOT``, else the root the build recorded (``$VAR`` expanded), else ``~/.shiv``
    (shiv's ``Environment.root`` and ``cache_path``)."""
    from pathlib import Path

    root = os.environ.get("SHIV_ROOT", env.get("root"))
    if not root or not isinstance(root, str):
        return Path("~/.shiv").expanduser()
    if root.startswith("$"):
        root = os.environ.get(root[1:], root[1:])
    return Path(root).expanduser()


def running_archive() -> Path | None:
    """The real path of the ``.pyz`` this process runs from (symlinks resolved), or None when
    it does not run from a shiv archive (a source checkout, a registered fast child)."""
    path = running_archive_path()
    if path is None:
        return None
    from pathlib import Path

    return Path(path)


def running_archive_path() -> str | None:
    """:func:`running_archive` as a string, without importing :mod:`pathlib` (with what it
    imports, ``re``, ``fnmatch``, ``urllib.parse``, ``ipaddress``: ~5 ms of a start that
    needs nothing else of them, such as the app-start hook's)."""
    global _archive
    if _archive is _UNKNOWN:
        # shiv's bootstrap is imported from the archive as the module "_bootstrap", or the
        # fast start (._main, the archive's __main__) went past it; either's loader
        # (zipimport) knows the archive's path.
        boot = sys.modules.get("_bootstrap")
        if not hasattr(boot, "bootstrap"):
            boot = sys.modules.get("__main__")
            boot = boot if getattr(boot, "RECORD", None) else None
        archive = getattr(getattr(boot, "__loader__", None), "archive", None)
        _archive = os.path.realpath(archive) if isinstance(archive, str) else None
    return _archive  # type: ignore[no-any-return]


def running_extraction() -> str | None:
    """This build's shiv ``site-packages`` directory, if this code runs from one."""
    # This file is SITE_PACKAGES/selfupdate/_shiv/__init__.py.
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    bid = os.path.basename(os.path.dirname(here)).rpartition("_")[2]
    if os.path.basename(here) != "site-packages" or len(bid) != 64:
        return None  # not shiv's ROOT/NAME_BUILDID/site-packages
    return here


def _environment(zf: Any) -> dict[str, Any]:
    """The ``environment.json`` shiv wrote into an open archive.

    Raises:
        KeyError: there is none (not a shiv archive); ValueError: it is not a JSON object.
    """
    import json

    env = json.loads(zf.read("environment.json"))
    if not isinstance(env, dict):
        raise ValueError("environment.json is not an object")
    return env


def build_id(pyz: Path) -> str | None:
    """The build id shiv recorded in a ``.pyz`` (None if it is not a shiv archive)."""
    import zipfile

    try:
        with zipfile.ZipFile(pyz) as zf:
            value = _environment(zf).get("build_id")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return value if isinstance(value, str) else None


def hold_extraction() -> bool:
    """Take a shared lock on this build's extraction directory, kept until the process ends
    (``exec`` included: the descriptor is close-on-exec, the new build takes its own).

    :func:`._clean.clean_shiv_dirs` never removes a directory whose lock is held. The lock file
    is private (:func:`open_private_lock`), and the lock is taken without waiting
    (``LOCK_SH|LOCK_NB``): only this user's cleaner can hold it exclusively, for as long as it
    checks whether the directory is in use. When it does, the start goes on without the lock,
    keeping the file open: the cleaner sees the open descriptor (rule 3 of the cleaning) and
    keeps the directory, or it had already renamed it away, which this function sees.

    Best effort: without a writable extraction directory there is nothing to mark.

    Returns:
        False when the extraction was removed between shiv's check and this lock (the caller
        must start the program again, and shiv extracts it afresh); True otherwise.

    Raises:
        UntrustedDirectoryError: the extraction or ``SHIV_ROOT`` can be written by another user
            (what runs may not be this program; nothing was created or locked there).
    """
    global _inuse_fd
    import fcntl
    import stat

    sp = running_extraction()
    if sp is None or _inuse_fd is not None:
        return True
    ext = os.path.dirname(sp)
    try:
        private_dir(os.path.dirname(ext))
        private_dir(ext, "the shiv extraction", remedy="remove it and start the program again",
                    risk="what runs from it may be another user's code")
    except FileNotFoundError:
        return False
    try:
        dfd = os.open(ext, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        for _ in range(3):
            try:
                fd = open_private_lock(dfd, INUSE_LOCK)
            except OSError:
                return os.path.isdir(sp)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                pass  # this user's cleaner is looking at it: see the docstring
            try:
                same = os.stat(INUSE_LOCK, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                same = None
            mine = os.fstat(fd)
            if same is not None and stat.S_ISREG(same.st_mode) and (
                same.st_ino, same.st_dev) == (mine.st_ino, mine.st_dev):
                break  # the file locked is the one the cleaner will try
            os.close(fd)  # another start replaced an old lock file meanwhile: lock the new one
        else:
            return True
    finally:
        os.close(dfd)
    if not os.path.isdir(sp):
        os.close(fd)
        return False
    _inuse_fd = fd
    return True
