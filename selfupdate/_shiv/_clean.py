"""Removing shiv extractions of builds no longer installed and no longer used (see
:mod:`selfupdate._shiv`)."""

from __future__ import annotations

import os
import stat

from selfupdate._names import INUSE_LOCK
from selfupdate._shiv import build_id, shiv_root
from selfupdate._shiv._trust import private_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["clean_shiv_dirs", "remove_unused"]


def _used_by_a_process(path: Path) -> bool:
    """True if any other process we can see maps, runs in, holds open or names ``path``."""
    prefix = str(path) + "/"
    me = os.getpid()
    trusted = (os.geteuid(), 0)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return True  # cannot tell: keep it
    for pid in pids:
        if int(pid) == me:
            continue
        base = f"/proc/{pid}"
        try:
            # A command line is text its process chose: only ours (or root's) count, or any
            # user could keep an old extraction from ever being removed by naming it. What
            # the kernel says a process maps, runs in or holds open counts for everyone.
            if os.stat(base).st_uid in trusted:
                with open(f"{base}/cmdline", "rb") as f:
                    # A reexec fast child carries the extraction in its sys.path literal.
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
    ``keep`` (installed and previous) and :func:`remove_unused` finds it unused. Only in a
    ``ROOT`` this user owns and nobody else can write (:mod:`._trust`), and only directories
    this user owns: nothing is created or opened through a symbolic link.

    Returns:
        The directories removed.

    Raises:
        UntrustedDirectoryError: ``ROOT`` can be written by another user (nothing touched).
    """
    import re
    import shutil
    from pathlib import Path

    try:
        root = Path(private_dir(root or shiv_root()))
    except FileNotFoundError:
        return []
    keep_ids = {i for i in (build_id(p) for p in keep if p.exists()) if i}
    pattern = re.compile(re.escape(name) + r"_([0-9a-f]{64})")
    removed: list[Path] = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return removed
    leftover = re.compile(r"\." + re.escape(name) + r"_[0-9a-f]{64}\.(?:seed|removing)-(\d+)")
    for entry in entries:
        m = leftover.fullmatch(entry)
        if m is not None and not _alive(int(m.group(1))) and _mine(root / entry):
            # A seed or removal cut short by a kill: nobody uses a half-made directory.
            shutil.rmtree(root / entry, ignore_errors=True)
            removed.append(root / entry)
            continue
        m = pattern.fullmatch(entry)
        if m is None or m.group(1) in keep_ids:
            continue
        if remove_unused(root, entry):
            removed.append(root / entry)
    return removed


def _mine(path: Path) -> bool:
    """A real directory (not a link to one) of this user."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def remove_unused(root: Path, entry: str) -> bool:
    """Remove the extraction ``root/entry`` if this user owns it and nothing uses it.

    ``root`` must have passed :func:`._trust.private_dir`. Unused: an exclusive ``flock`` on its
    in-use lock can be taken (every running build holds a shared one,
    :func:`selfupdate._shiv.hold_extraction`), and no visible process maps a file in it, runs
    in it, holds one open or names it on its command line. It is renamed away under the
    exclusive lock, checked once more (a build that started meanwhile holds its lock file open
    even where it could not lock it) and put back if used, else deleted; so a process
    starting that build afterwards gets a fresh extraction from shiv.

    Returns:
        True if it was removed.
    """
    import fcntl
    import shutil

    d = root / entry
    if not _mine(d):
        return False  # another user's (or not a directory): never touched
    try:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        # Not open_private_lock: replacing an older, wider lock file here would lose the
        # shared locks running builds hold on it. Opened as it is, never through a link.
        fd = os.open(INUSE_LOCK, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK, 0o600, dir_fd=dfd)
    except OSError:
        return False
    finally:
        os.close(dfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a running process holds it
        if _used_by_a_process(d):
            return False
        gone = root / f".{entry}.removing-{os.getpid()}"
        try:
            os.rename(d, gone)
        except OSError:
            return False
        if _used_by_a_process(gone):
            os.rename(gone, d)  # started between the check and the rename: keep it
            return False
        shutil.rmtree(gone, ignore_errors=True)
        try:
            os.unlink(root / f".{entry}_lock")
        except FileNotFoundError:
            pass
        return True
    finally:
        os.close(fd)
