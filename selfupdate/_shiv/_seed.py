"""Seeding a new build's shiv extraction from the old build's (see :mod:`selfupdate._shiv`)."""

from __future__ import annotations

import errno
import os
import stat

from selfupdate._names import EXTRACTION_DONE
from selfupdate._shiv import _environment, extraction_root, open_private_lock
from selfupdate._shiv._trust import UntrustedDirectoryError, check_tree, private_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

__all__ = ["seed_extraction"]

_PLANTED = "remove it and try again"


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_extraction_root(installed: Path) -> None:
    """Before an update downloads anything: the root the installed build extracts into (the
    new build will most likely use the same; :func:`seed_extraction` checks its own again)
    must be one only this user or root can change. A root that does not exist yet is fine
    (it is made 0700 when the trial needs it); an archive that is not shiv's has none.

    Raises:
        UntrustedDirectoryError: the root could be another user's (one sentence).
    """
    import zipfile

    try:
        if not zipfile.is_zipfile(installed):
            return
        with zipfile.ZipFile(installed) as z:
            env = _environment(z)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        # not shiv's (no environment.json), or unreadable: the update reports what it needs
        return
    if not isinstance(env.get("build_id"), str):
        return
    try:
        private_dir(extraction_root(env))
    except UntrustedDirectoryError:
        raise
    except OSError:
        return  # missing (FileNotFoundError) or not examinable: the seeding says which


def seed_extraction(old: Path, new: Path, root: Path | None = None) -> Path | None:
    """Make sure the build ``new`` runs only from an extraction this user made, and prepare
    that extraction from the old build's.

    The trial runs ``new``, and shiv runs whatever is in ``ROOT/NAME_BUILDID/site-packages``,
    a name anyone who has seen the release knows in advance. So first, ``ROOT`` (``$SHIV_ROOT``
    or what shiv would use; created 0700 if missing) must belong to this user and be writable
    by nobody else (:func:`._trust.private_dir`). An extraction of ``new`` that is already there
    was made by nobody in this update: one another user could have made or changed
    (:func:`._trust.check_tree`) is refused; one of this user's is used as it is only if it
    holds exactly the archive's files (CRC-32 of each, read in full; another install of the
    same program may have made it, and may be running its trial from it), else removed and
    made again, so that what the trial runs is the release.

    Then, because a new build mostly carries the same dependencies as the old one, every file
    of the new archive's ``site-packages`` whose CRC-32 and size the old archive also lists
    under that name is hard-linked from the old extraction -- once the old extraction's file
    (a regular file of this user, writable by nobody else) is read and found to have exactly
    that CRC-32. Everything else, and every ``.pyc`` the old build wrote beside its sources,
    is extracted from the new archive (never carried: a ``.pyc`` says nothing about what it was
    compiled from but the source's mtime and size). Everything is on disk before the completion
    marker is written, last (:func:`._boot.mark_complete`). The result is renamed into place under
    shiv's own extraction lock (private, :func:`selfupdate._shiv.open_private_lock`), so shiv
    finds it complete and skips extraction, or extracts itself.

    Both archives have the same base name (the staged file is named like the installed one).

    Returns:
        The extraction directory made, or None when there was nothing to do (no old
        extraction, same build, not shiv archives, in use).

    Raises:
        UntrustedDirectoryError: ``ROOT``, or an extraction of ``new`` found there, could be
            another user's (nothing was run or changed; one sentence says which and why).
    """
    import fcntl
    import zipfile

    if not zipfile.is_zipfile(new):
        return None
    with zipfile.ZipFile(new) as zn:
        env_new = _environment(zn)
        new_id = env_new.get("build_id")
        if not isinstance(new_id, str) or not new_id:
            return None
        from pathlib import Path

        root = Path(private_dir(root or extraction_root(env_new), create=True))
        name = f"{new.name}_{new_id}"
        target = root / name
        if not _target_free(root, name, zn):
            return None
        old_dir = _old_extraction(old, root, new_id)
        if old_dir is None:
            return None
        with zipfile.ZipFile(old) as zo:
            before = {i.filename: i for i in zo.infolist()
                      if i.filename.startswith("site-packages/")}
        from selfupdate._shiv._boot import mark_complete, sync_point

        tmp = root / f".{name}.seed-{os.getpid()}"
        _remove(tmp)
        since = sync_point(str(root))  # before anything of tmp is written: mark_complete
        os.mkdir(tmp, 0o700)
        made = {tmp}
        try:
            for info in zn.infolist():
                entry = info.filename
                parts = entry.rstrip("/").split("/")
                if parts[0] != "site-packages" or ".." in parts or "" in parts:
                    continue
                dest = tmp / entry.rstrip("/")
                _mkdirs(dest if info.is_dir() else dest.parent, made)
                if info.is_dir():
                    continue
                o = before.get(entry)
                if (o is not None and o.CRC == info.CRC and o.file_size == info.file_size
                        and _link_verified(old_dir / entry, dest, info)):
                    continue
                mode = ((info.external_attr >> 16) & 0o755) or 0o644
                if not _copy_stored(new, info, dest, mode):
                    _extract(zn, info, dest, mode)
            # Everything verified and on disk, the marker last: the trial, and every start
            # after it, takes the same fast path (selfupdate._shiv._main).
            mark_complete(str(tmp), EXTRACTION_DONE, new_id, since)
            # shiv's extraction lock (fcntl.flock, as in shiv's bootstrap/filelock.py): shiv
            # either sees our complete directory or extracts into its own .tmp first.
            rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fd = open_private_lock(rfd, f".{name}_lock", os.O_RDWR)
            finally:
                os.close(rfd)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return None  # this user's shiv is extracting it: let it
                if os.path.lexists(target):
                    return None
                os.rename(tmp, target)
            finally:
                os.close(fd)
        finally:
            if since is not None:
                os.close(since)
            if tmp.exists():
                _remove(tmp)
    return target


def _target_free(root: Path, name: str, zn: Any) -> bool:
    """True: no extraction ``root/name`` is there (now); False: one of this user's is there and
    holds exactly the archive ``zn``'s files (:func:`._boot.matches`): shiv may use it as it is.

    One of this user's that holds anything else (a leftover changed since, a file the release
    does not have) is removed if nothing uses it.

    Raises:
        UntrustedDirectoryError: the one there could be another user's, or differs from the
            release while something runs from it.
    """
    from selfupdate._shiv._clean import remove_unused

    path = str(root / name)
    what = "the extraction of the build to run"
    risk = "running the build from it could run another user's code"
    try:
        private_dir(path, what, remedy=_PLANTED, risk=risk)
    except FileNotFoundError:
        if not os.path.lexists(path):
            return True
        raise UntrustedDirectoryError(  # a dangling symbolic link
            f"{what} {path} is a symbolic link to nowhere: {risk}; {_PLANTED}",
            path, "is a dangling symbolic link",
        ) from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UntrustedDirectoryError(
            f"{what} {path} is a symbolic link: {risk}; {_PLANTED}", path, "is a symbolic link"
        )
    if st.st_uid != os.geteuid():
        raise UntrustedDirectoryError(
            f"{what} {path} belongs to another user (uid {st.st_uid}): {risk}; {_PLANTED}",
            path, f"belongs to uid {st.st_uid}",
        )
    # Inside a root closed to others (the boot gate closes it) a loose mode reaches nobody.
    check_tree(path, what, _PLANTED, modes=bool(os.lstat(root).st_mode & 0o077))
    # The gate's own check: it ignores every dot-file at the top of the extraction, a superset
    # of what this user's starts leave there (INUSE_LOCK, EXTRACTION_DONE, a killed start's
    # temporary marker), and nothing at the top is on sys.path. Bytecode beside the sources is
    # ignored too: only this user could have written it (check_tree), and it is never carried.
    from selfupdate._shiv._boot import matches

    if matches(path, zn):
        return False
    if remove_unused(root, name):
        return True
    raise UntrustedDirectoryError(
        f"{what} {path} holds files the release does not and something runs from it: the "
        "trial could run them; stop what runs from it and try again",
        path, "differs from the release and is in use",
    )


def _old_extraction(old: Path, root: Path, new_id: str) -> Path | None:
    """The old build's extraction in ``root``, if it is this user's to link from."""
    import zipfile

    try:
        with zipfile.ZipFile(old) as zo:
            old_id = _environment(zo).get("build_id")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if not isinstance(old_id, str) or not old_id or old_id == new_id:
        return None
    d = root / f"{old.name}_{old_id}"
    try:
        st = os.lstat(d)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return None
    return d


def _mkdirs(d: Path, made: set[Path]) -> None:
    """``mkdir -p`` inside the private seed directory, each new level 0700."""
    if d in made:
        return
    _mkdirs(d.parent, made)
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    made.add(d)


def _link_verified(src: Path, dest: Path, info: Any) -> bool:
    """Hard-link the old extraction's ``src`` as ``dest`` if it is a regular file of this user
    that nobody else can write, of the entry's size and CRC-32 (read in full); False: extract
    instead. The inode linked is the inode read (compared after the link)."""
    import zlib

    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & 0o022 or st.st_size != info.file_size):
            return False
        crc = 0
        while chunk := os.read(fd, 1 << 20):
            crc = zlib.crc32(chunk, crc)
        if crc != info.CRC:
            return False
        os.link(src, dest, follow_symlinks=False)
        got = os.lstat(dest)
        if (got.st_ino, got.st_dev) != (st.st_ino, st.st_dev):
            os.unlink(dest)  # src was replaced after it was read
            return False
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _create(dest: Path) -> int:
    return os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                   0o600)


def _extract(zf: Any, info: Any, dest: Path, mode: int) -> None:
    """Write an archive entry (zipfile checks its CRC-32 at the end) to a new file."""
    import shutil

    fd = _create(dest)
    try:
        with zf.open(info) as src, open(fd, "wb", closefd=False) as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _copy_stored(archive: Path, info: Any, dest: Path, mode: int) -> bool:
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
        fd = _create(dest)
        try:
            left = info.file_size
            while left:
                n = os.copy_file_range(src.fileno(), fd, left, offset)
                if n <= 0:
                    raise OSError(errno.EIO, f"short copy of {info.filename}")
                offset += n
                left -= n
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            os.unlink(dest)
            raise
        os.close(fd)
    return True
