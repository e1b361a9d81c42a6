"""The slow gate of a built ``.pyz``: every start the fast path of :mod:`._main` did not take.

Packed into the archive as the top-level module ``_selfupdate_boot`` (beside
``_selfupdate_trust``, a copy of :mod:`._trust`), and imported from the framework as
:mod:`selfupdate._shiv._boot` by the seeding. Standard library only. Before anything from an
extraction can run:

1. ``ROOT`` (``$SHIV_ROOT``, the root the build recorded, or ``~/.shiv``) must be a directory
   only this user or root can change, all the way up (:func:`._trust.private_dir`, which
   creates it 0700 if missing). Refused, or impossible (no writable ``HOME``), the start stops
   with one sentence naming ``SHIV_ROOT``; nothing runs;
2. an extraction of this build already there must be this user's (or root's), with nothing in
   it another user owns or may write, and no link (:func:`._trust.check_tree`); else one
   sentence, nothing runs;
3. an extraction without this build's completion marker (the start that made it was killed
   after shiv moved it into place, an older framework or plain shiv made it) is compared with
   the archive (every file's size and CRC-32, nothing more, nothing less): if it holds exactly
   the archive's files it is marked complete, otherwise extracted again (shiv's own
   ``extract_site_packages``, under shiv's lock, ``force``);
4. a missing extraction is made by shiv's ``extract_site_packages`` (into ``NAME.tmp``, moved
   into place under its lock: a start killed half-way leaves only the ``.tmp``);
5. the marker is written last: everything in the extraction on disk first (one ``syncfs(2)``
   of a fresh extraction's filesystem where that is as durable, else every file and directory
   fsynced), then the marker (the build id) written to a private temporary file, fsynced,
   renamed into place and the directory fsynced (:func:`mark_complete`);

then shiv's bootstrap runs as shiv wrote it (it finds the extraction and skips extracting).
With ``SHIV_FORCE_EXTRACT`` set, steps 3-5 are left to shiv (and the marker it removes is
written again at the next start).
"""

from __future__ import annotations

import os
import sys

try:
    from selfupdate._shiv._trust import (
        ROOT_REMEDY,
        UntrustedDirectoryError,
        check_tree,
        close_dir,
        open_private_lock,
        private_dir,
    )
except ImportError:  # in the archive, before any site-packages is on sys.path
    from _selfupdate_trust import (  # type: ignore[import-not-found,no-redef]
        ROOT_REMEDY,
        UntrustedDirectoryError,
        check_tree,
        close_dir,
        open_private_lock,
        private_dir,
    )

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["mark_complete", "start"]

_REMEDY = "remove it and start the program again"


class _Refused(Exception):
    """The start stops: ``str()`` is the one sentence to print."""


def _say(message: str) -> None:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "this program"
    prog = prog[: -len(".pyz")] if prog.endswith(".pyz") else prog  # the app, as it names itself
    sys.stderr.write(f"{prog}: {message}\n")
    sys.stderr.flush()


def start(record: tuple[str, str | None, str | None, str] | None) -> None:
    """Check and prepare the extraction, then run shiv's bootstrap (which does not return when
    the program exits normally). A refusal is one line on stderr and exit status 1."""
    try:
        _prepare(record)
    except _Refused as e:
        _say(str(e))
        raise SystemExit(1) from None
    import _bootstrap  # type: ignore[import-not-found]  # shiv's, in the archive

    _bootstrap.bootstrap()


def _root(env: Any) -> str:
    """The root shiv will extract into (shiv's ``cache_path``), ``~`` expanded."""
    root = env.root
    if root and root.startswith("$"):
        root = os.environ.get(root[1:], root[1:])
    return os.path.expanduser(root or "~/.shiv")


def _prepare(record: tuple[str, str | None, str | None, str] | None) -> None:
    import zipfile

    import _bootstrap

    archive_path = sys.argv[0]
    with zipfile.ZipFile(archive_path) as zf:
        env = _bootstrap.Environment.from_json(zf.read("environment.json").decode())
        given = _root(env)
        try:
            root = private_dir(given, create=True)
        except UntrustedDirectoryError as e:
            raise _Refused(str(e)) from None
        except OSError as e:
            where = f" (at {e.filename})" if e.filename and e.filename != given else ""
            raise _Refused(
                f"cannot extract this program into {given}{where}: {e.strerror or e}; "
                f"{ROOT_REMEDY}"
            ) from None
        if record is None or env.build_id != record[0]:
            return  # not packed by selfupdate build: shiv alone
        name = os.path.basename(os.path.realpath(archive_path))
        ext = os.path.join(root, f"{name}_{env.build_id}")
        marker = record[3]
        # A root others may enter (plain shiv's 0755 ~/.shiv) is closed (0700) once what is
        # there of this build passed the strict check: from then on nobody else reaches what
        # a loose umask leaves writable in it (a later __pycache__ 0775), nor its locks.
        was_closed = _closed(root)
        if os.path.lexists(ext):
            what = "the shiv extraction"
            risk = "what runs from it may be another user's code"
            try:
                private_dir(ext, what, remedy=_REMEDY, risk=risk)
                check_tree(ext, what, _REMEDY, modes=not was_closed)
            except UntrustedDirectoryError as e:
                raise _Refused(str(e)) from None
            except OSError as e:
                raise _Refused(f"{what} {ext} cannot be read: {e.strerror or e}; {_REMEDY}") \
                    from None
            close_dir(root)  # what is there passed the strict check: nothing to undo
            if env.force_extract:
                # shiv removes the extraction in place before extracting again: a kill
                # half-way must not leave a marked, half-removed one behind.
                _unmark(ext, marker)
                return
            if _marked(ext, marker, env.build_id):
                return
            if matches(ext, zf):
                mark_complete(ext, marker, env.build_id)  # written by an earlier start
                return
            force = True
        elif env.force_extract:
            close_dir(root)
            return  # shiv extracts
        else:
            close_dir(root)
            force = False
        since = sync_point(root)
        try:
            _extract(zf, env, root, ext, force=force)
            mark_complete(ext, marker, env.build_id, since)
        finally:
            if since is not None:
                os.close(since)


def _closed(path: str) -> bool:
    try:
        return not os.lstat(path).st_mode & 0o077
    except OSError:
        return False


def _unmark(ext: str, marker: str) -> None:
    try:
        os.unlink(os.path.join(ext, marker))
    except FileNotFoundError:
        return
    except OSError as e:
        raise _Refused(f"cannot re-extract {ext}: {e.strerror or e}; {_REMEDY}") from None
    _fsync(ext, os.O_RDONLY | os.O_DIRECTORY)


def _extract(zf: Any, env: Any, root: str, ext: str, *, force: bool) -> None:
    import threading
    from pathlib import Path

    import _bootstrap

    # shiv's lock, private before shiv opens it: a lock another user could open is a lock
    # they could hold, and shiv would wait for it forever.
    try:
        rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.close(open_private_lock(rootfd, f".{os.path.basename(ext)}_lock", os.O_RDWR))
        finally:
            os.close(rootfd)
    except OSError as e:
        raise _Refused(
            f"cannot extract this program into {root}: {e.strerror or e}; {ROOT_REMEDY}"
        ) from None

    # A large build on a slow disk: say what takes so long (on a terminal, after a second).
    note = threading.Timer(1.0, _say, [f"first start of this build: unpacking it into "
                                       f"{os.path.dirname(ext)} ..."])
    note.daemon = True
    if sys.stderr is not None and sys.stderr.isatty():
        note.start()
    # Every file and directory of the extraction private (0600/0700) whatever the umask: a
    # umask of 002 or 000 would otherwise leave them for others to change.
    umask = os.umask(0o077)
    try:
        _bootstrap.extract_site_packages(zf, Path(ext), env.compile_pyc, env.compile_workers,
                                         force)
    except OSError as e:
        raise _Refused(
            f"cannot extract this program into {os.path.dirname(ext)}: {e.strerror or e}; free "
            f"some space there or {ROOT_REMEDY}"
        ) from None
    finally:
        os.umask(umask)
        note.cancel()


def _marked(ext: str, marker: str, build_id: str) -> bool:
    try:
        fd = os.open(os.path.join(ext, marker), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, 200) == f"{build_id}\n".encode()
    finally:
        os.close(fd)


def matches(ext: str, zf: Any) -> bool:
    """``ext/site-packages`` holds exactly the archive's ``site-packages`` files (size and
    CRC-32 of each, read in full), and ``ext`` nothing else but files whose names start with a
    dot at its top (locks, the marker, a killed start's temporary marker: nothing there is on
    ``sys.path``) and the bytecode Python writes beside sources it imported from there.

    Run only on a tree that passed :func:`._trust.check_tree` (no link, nothing of another
    user's), as the gate and the seeding do."""
    import zlib

    want = {i.filename: i for i in zf.infolist()
            if i.filename.startswith("site-packages/") and not i.is_dir()}
    seen = 0
    for dirpath, _dirs, files in os.walk(ext):
        rel_dir = os.path.relpath(dirpath, ext)
        for f in files:
            rel = f if rel_dir == "." else f"{rel_dir}/{f}"
            info = want.get(rel)
            if info is None:
                if rel_dir == "." and f.startswith(".") or (
                    os.path.basename(dirpath) == "__pycache__" and f.endswith(".pyc")
                    and rel.startswith("site-packages/")
                ):
                    continue
                return False
            try:
                with open(os.path.join(dirpath, f), "rb") as fh:
                    crc = size = 0
                    while chunk := fh.read(1 << 20):
                        crc = zlib.crc32(chunk, crc)
                        size += len(chunk)
            except OSError:
                return False
            if crc != info.CRC or size != info.file_size:
                return False
            seen += 1
    return seen == len(want)


def mark_complete(ext: str, marker: str, build_id: str, since: int | None = None) -> None:
    """Write ``ext/marker`` (the build id) once everything in ``ext`` is on disk, then the
    marker through a private temporary file, fsynced, renamed into place, and ``ext`` fsynced
    again. Best effort: a marker that cannot be written only means the next start takes this
    slow gate again.

    What "on disk" costs: with ``since`` (a directory descriptor on ``ext``'s filesystem,
    opened *before* any of ``ext`` was written: :func:`sync_point`) and a filesystem whose
    ``syncfs(2)`` is known to write and wait for every file and directory (:func:`_syncfs`),
    one ``syncfs``: a writeback error anywhere on it since ``since`` was opened is reported
    (Linux >= 5.8), so nothing that failed to reach the disk is marked. Otherwise (no
    ``since``: files written by an earlier, killed start; another filesystem; no ``ctypes``)
    each file and directory is fsynced, which reports any error not yet seen on that file.
    """
    try:
        if since is None or not _syncfs(since, ext):
            for dirpath, _dirs, files in os.walk(ext):
                for f in files:
                    _fsync(os.path.join(dirpath, f), os.O_RDONLY)
                _fsync(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        tmp = os.path.join(ext, f".{marker}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, f"{build_id}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(ext, marker))
        _fsync(ext, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        pass


def sync_point(directory: str) -> int | None:
    """A descriptor on ``directory`` for :func:`mark_complete`'s ``since``, taken before the
    extraction below it is written (None: it cannot be opened; each file is fsynced then).
    The caller closes it."""
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None


# statfs(2) f_type of the filesystems whose syncfs(2) writes back and waits for all of their
# dirty data and metadata and reports errors: ext2/3/4, XFS, Btrfs, F2FS, overlayfs (its upper
# layer), tmpfs (nothing to write). Not here: FUSE (a no-op before FUSE_SYNCFS), NFS and other
# network filesystems, anything unknown: their files are fsynced one by one.
_SYNCFS_FILESYSTEMS = frozenset({0xEF53, 0x58465342, 0x9123683E, 0xF2F52010, 0x794C7630,
                                 0x01021994})


def _syncfs(since: int, ext: str) -> bool:
    """``syncfs(2)`` of the filesystem of ``since``, if it holds ``ext`` and is one of
    :data:`_SYNCFS_FILESYSTEMS`, on Linux >= 5.8 (before, syncfs did not report writeback
    errors). True: done; False: not possible here (the caller fsyncs each file).

    Raises:
        OSError: the filesystem reported a writeback error (nothing may be marked).
    """
    import errno

    kernel = tuple(int(n) for n in os.uname().release.split("-")[0].split(".")[:2]
                   if n.isdigit())
    if sys.platform != "linux" or kernel < (5, 8):
        return False
    try:
        if os.fstat(since).st_dev != os.lstat(ext).st_dev:
            return False
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        statfs, syncfs = libc.fstatfs, libc.syncfs
    except (OSError, ImportError, AttributeError):
        return False
    # struct statfs: f_type is its first field, a long (where it is not, as on s390x, what
    # is read is no known type: each file is fsynced).
    buf = ctypes.create_string_buffer(256)
    if statfs(since, buf) != 0:
        return False
    if ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF not in _SYNCFS_FILESYSTEMS:
        return False
    if syncfs(since) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
        return False  # refused (a seccomp filter, say): fsync each file instead
    raise OSError(err, os.strerror(err), ext)


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
