"""Removing shiv extractions of builds no longer installed and no longer used (see
:mod:`selfupdate._shiv`)."""

from __future__ import annotations

import os

from selfupdate._names import INUSE_LOCK
from selfupdate._shiv import build_id, shiv_root

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["clean_shiv_dirs"]


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
    ``keep`` (installed and previous), nobody holds its in-use lock (:func:`hold_extraction`),
    and no visible process maps a file in it, runs in it, holds one open or names it on its
    command line. It is renamed away under the exclusive lock before being deleted, so a
    process starting that build afterwards gets a fresh extraction from shiv.

    Returns:
        The directories removed.
    """
    import fcntl
    import re
    import shutil

    root = root or shiv_root()
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
            try:
                os.unlink(root / f".{entry}_lock")
            except FileNotFoundError:
                pass
            removed.append(d)
        finally:
            os.close(fd)
    return removed
