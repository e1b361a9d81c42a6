"""Everything selfupdate knows about shiv, in one place.

shiv (linkedin/shiv) runs a ``.pyz`` by extracting its ``site-packages`` once into
``ROOT/NAME_BUILDID/site-packages`` (``ROOT``: ``$SHIV_ROOT`` or ``~/.shiv``; ``NAME``: the
archive's file name; ``BUILDID``: from the archive's ``environment.json``) and never removes an
extraction. This module knows that layout and nothing else does:

- :func:`running_archive` and :func:`running_extraction`: the ``.pyz`` this process runs from
  and its extraction directory, detected once per process;
- :func:`build_id`: the build id a ``.pyz`` records (the one reader of ``environment.json``);
- :func:`hold_extraction`: the in-use lock a running build holds on its extraction;
- :func:`seed_extraction`: a new build's extraction prepared from the old one's (hard links);
- :func:`clean_shiv_dirs`: removal of extractions of builds no longer installed and unused.

Imports only ``os`` and ``sys`` at module level: the app-start hook uses it at every start.
"""

from __future__ import annotations

import errno
import os
import sys

from selfupdate._names import INUSE_LOCK

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

__all__ = [
    "build_id",
    "clean_shiv_dirs",
    "hold_extraction",
    "running_archive",
    "running_extraction",
    "seed_extraction",
    "shiv_root",
]

_UNKNOWN: Any = object()
_archive: Any = _UNKNOWN  # running_archive(), once detected
_inuse_fd: int | None = None  # the shared lock hold_extraction() took


def shiv_root() -> Path:
    """Where shiv extracts builds: ``$SHIV_ROOT`` or ``~/.shiv`` (as shiv's bootstrap decides)."""
    from pathlib import Path

    root = os.environ.get("SHIV_ROOT")
    return Path(root).expanduser() if root else Path("~/.shiv").expanduser()


def running_archive() -> Path | None:
    """The real path of the ``.pyz`` this process runs from (symlinks resolved), or None when
    it does not run from a shiv archive (a source checkout, a registered fast child)."""
    global _archive
    if _archive is _UNKNOWN:
        # shiv's bootstrap is imported from the archive as the module "_bootstrap"; its loader
        # (zipimport) knows the archive's path.
        boot = sys.modules.get("_bootstrap")
        archive = getattr(getattr(boot, "__loader__", None), "archive", None)
        if isinstance(archive, str) and hasattr(boot, "bootstrap"):
            from pathlib import Path

            _archive = Path(os.path.realpath(archive))
        else:
            _archive = None
    return _archive  # type: ignore[no-any-return]


def running_extraction() -> str | None:
    """This build's shiv ``site-packages`` directory, if this code runs from one."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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

    :func:`clean_shiv_dirs` never removes a directory whose lock is held. Best effort: without
    a writable extraction directory there is nothing to mark.

    Returns:
        False when the extraction was removed between shiv's check and this lock (the caller
        must start the program again, and shiv extracts it afresh); True otherwise.
    """
    global _inuse_fd
    import fcntl

    sp = running_extraction()
    if sp is None or _inuse_fd is not None:
        return True
    try:
        fd = os.open(
            os.path.join(os.path.dirname(sp), INUSE_LOCK),
            os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC,
            0o644,
        )
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return True
    if not os.path.isdir(sp):
        os.close(fd)
        return False
    _inuse_fd = fd
    return True


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --------------------------------------------------------------------------------------------
# Seeding a new build's extraction


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


# --------------------------------------------------------------------------------------------
# Cleaning extractions of builds no longer installed


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
