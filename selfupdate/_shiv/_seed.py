"""Seeding a new build's shiv extraction from the old build's (see :mod:`selfupdate._shiv`)."""

from __future__ import annotations

import errno
import os
import sys

from selfupdate._shiv import _environment, shiv_root

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

__all__ = ["seed_extraction"]


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


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
        env_old, env_new = _environment(zo), _environment(zn)
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
        _remove(tmp)
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
            _remove(tmp)
    return target


def _link_pyc(src: Path, dest: Path) -> None:
    """Hard-link the old extraction's bytecode of ``src`` beside its link ``dest``, so the new
    build does not compile again what the old one compiled. Python still checks it against
    the source's mtime and size, which a hard link shares: a stale file is just recompiled."""
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


