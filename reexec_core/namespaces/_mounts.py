"""The mounts of a new mount namespace; under a new root, every target resolved inside it.

A new root (``root=``) is a directory tree the caller hands us, and it may hold symlinks
(``etc -> /tmp/x``, a merged ``/usr``). Its mount targets are resolved as the workload will see
them after ``pivot_root``: a symlink, absolute or with ``..``, is followed as if the new root
were ``/``, so ``/etc/app`` with ``etc -> /tmp/x`` lands on ``ROOT/tmp/x/app`` -- never on the
host's ``/tmp/x`` (security issue, 7: the mount point used to be created there, and the mount
vanished with the old root). That is ``openat2(2)`` with ``RESOLVE_IN_ROOT`` (Linux 5.6+);
missing components are created with ``mkdirat`` in the directory resolved so far, and the
mount is made on the descriptor (``/proc/self/fd/N``), so no path is walked twice. Where the
kernel has no ``openat2`` the walk is done by hand with ``O_NOFOLLOW`` and refuses any symlink
on the way: a target it cannot resolve safely is one :class:`MountError` sentence.

Without a new root the targets are the caller's own paths, and must exist: nothing is created
on the host's filesystem, which outlives the namespace.
"""

from __future__ import annotations

import os
import stat
from errno import EEXIST, ELOOP, ENOENT, ENOSYS

from reexec_core.namespaces import _linux
from reexec_core.namespaces._wire import Failure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from reexec_core.namespaces._spec import Spec

__all__ = ["mount_all", "open_in_root"]

_MAX_LINKS = 40  # as the kernel's own limit on symlinks followed in one lookup (ELOOP)
#: Set to False to force the O_NOFOLLOW walk (a kernel without openat2, and tests).
use_openat2 = True


def _step(op: str, detail: str, fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except OSError as e:
        raise Failure(op, e.errno or 0, 0, detail) from e


def mount_all(spec: Spec, await_maps: Callable[[], None]) -> None:
    """Make the mounts of ``spec`` (binds, tmpfs, /proc) and pivot into its new root, if any.

    ``await_maps`` is called before the first step that may create a file (the id maps must be
    written by then, or the new files would belong to nobody).
    """
    root = spec.root
    if spec.mounts or root:
        await_maps()
    if root and not os.path.isdir(root):
        raise Failure("pivot_root", 0, 0, f"{root}: it is not a directory")
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if root else -1
    tmpfs_options = "mode=0755"
    setid = spec.sandbox["setid"] if spec.sandbox else None
    if setid is not None:
        # The workload takes other ids than ours (a root caller's strict preset): its tmpfs
        # is its own (ids as the workload's namespace sees them), else it could not write it.
        tmpfs_options += f",uid={setid[0]},gid={setid[1]}"
    try:
        for kind, src, dst in spec.mounts:
            shown = (root or "") + dst
            if kind == "tmpfs":
                flags = _linux.MS_NOSUID | _linux.MS_NODEV
                with _Target(rootfd, dst, shown, kind, "dir") as target:
                    _step(kind, shown, _linux.mount, "tmpfs", target, "tmpfs", flags, tmpfs_options)
                continue
            what = "dir" if os.path.isdir(src) or not os.path.exists(src) else "file"
            with _Target(rootfd, dst, shown, kind, what) as target:
                flags = _linux.MS_BIND | _linux.MS_REC
                _step(kind, f"{src} on {shown}", _linux.mount, src, target, None, flags)
            if kind == "ro-bind":
                # Again: the descriptor above is the directory under the mount, not the mount.
                with _Target(rootfd, dst, shown, kind, None) as target:
                    _step(kind, f"{src} on {shown} read-only", _linux.make_readonly, target)
        if spec.proc:
            # Before pivot_root: the kernel lets a user namespace mount proc only while a
            # fully visible proc is in the mount namespace (mnt_too_revealing), as bwrap does.
            shown = (root or "") + "/proc"
            flags = _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC
            with _Target(rootfd, "/proc", shown, "proc", "dir") as target:
                _step("proc", shown, _linux.mount, "proc", target, "proc", flags)
    finally:
        if rootfd != -1:
            os.close(rootfd)
    if root:
        _pivot(root)


class _Target:
    """A mount target as a path the kernel resolves to exactly the inode we found.

    Under a new root: ``/proc/self/fd/N`` of an ``O_PATH`` descriptor opened inside it (``what``
    ``"dir"``/``"file"``: created when missing; None: must exist). Otherwise the path itself.
    """

    def __init__(self, rootfd: int, dst: str, shown: str, kind: str, what: str | None) -> None:
        self._fd = -1
        self._path = shown
        self._args = (rootfd, dst, shown, kind, what)

    def __enter__(self) -> str:
        rootfd, dst, shown, kind, what = self._args
        if rootfd == -1:
            missing = not os.path.isdir(shown) if what == "dir" else not os.path.exists(shown)
            if what is not None and missing:
                raise Failure(
                    kind, 0, 0, f"{shown}: the mount point does not exist (create it first)"
                )
            return shown
        self._fd = open_in_root(rootfd, dst, what, shown, kind)
        return f"/proc/self/fd/{self._fd}"

    def __exit__(self, *exc: object) -> None:
        if self._fd != -1:
            os.close(self._fd)


def open_in_root(rootfd: int, path: str, create: str | None, shown: str, kind: str) -> int:
    """Return an ``O_PATH`` descriptor of ``path`` resolved inside the directory ``rootfd``.

    Args:
        rootfd: the new root (a directory descriptor).
        path: the target as the workload names it (absolute).
        create: make what is missing: directories on the way, and the last component a
            directory (``"dir"``) or an empty file (``"file"``); None: it must exist.
        shown, kind: the target and the mount kind, for the error.

    Raises:
        Failure: it does not exist (and ``create`` is None), cannot be created, or (without
            openat2) a symlink lies on the way.
    """
    global use_openat2
    if use_openat2:
        try:
            return _resolve(rootfd, path, create, shown, kind)
        except _NoOpenat2:
            use_openat2 = False
    return _walk(rootfd, path, create, shown, kind)


class _NoOpenat2(Exception):
    pass


def _open(rootfd: int, parts: list[str]) -> int:
    try:
        return _linux.openat2_in_root(rootfd, "/".join(parts) or ".", os.O_PATH)
    except OSError as e:
        if e.errno == ENOSYS:
            raise _NoOpenat2 from e
        raise


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def _resolve(rootfd: int, path: str, create: str | None, shown: str, kind: str) -> int:
    parts = _split(path)
    links = 0
    i = 0
    parent = _open(rootfd, [])
    try:
        while i < len(parts):
            try:
                fd = _open(rootfd, parts[: i + 1])
            except FileNotFoundError:
                if create is None:
                    raise Failure(kind, ENOENT, 0, shown) from None
                try:
                    link = os.readlink(parts[i], dir_fd=parent)
                except FileNotFoundError:
                    link = None
                except OSError as e:
                    raise Failure(kind, e.errno or 0, 0, shown) from e
                if link is not None:
                    # A symlink to what does not exist yet: create its target, inside the root
                    # (the kernel resolves ROOT/a/b/../c physically, so joining is exact).
                    links += 1
                    if links > _MAX_LINKS:
                        raise Failure(kind, ELOOP, 0, shown) from None
                    base = [] if link.startswith("/") else parts[:i]
                    parts = base + _split(link) + parts[i + 1 :]
                    os.close(parent)
                    parent = _open(rootfd, [])
                    i = 0
                    continue
                _create(parent, parts[i], "dir" if i < len(parts) - 1 else create, shown, kind)
                fd = _open(rootfd, parts[: i + 1])
            except OSError as e:
                raise Failure(kind, e.errno or 0, 0, shown) from e
            os.close(parent)
            parent = fd
            i += 1
        fd, parent = parent, -1
        return fd
    finally:
        if parent != -1:
            os.close(parent)


def _walk(rootfd: int, path: str, create: str | None, shown: str, kind: str) -> int:
    """The walk without openat2: component by component, ``O_NOFOLLOW``, no symlinks."""
    parts = _split(os.path.normpath("/" + path))
    fd = os.open(".", os.O_PATH | os.O_CLOEXEC, dir_fd=rootfd)
    try:
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nxt = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise Failure(kind, ENOENT, 0, shown) from None
                _create(fd, name, "dir" if not last else create, shown, kind)
                nxt = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                where = "/" + "/".join(parts[: i + 1])
                raise Failure(
                    kind,
                    0,
                    0,
                    f"{shown}: {where} is a symlink inside the new root, and this kernel has no "
                    "openat2 to follow it safely; give the target's real path",
                )
        return fd
    except BaseException:
        os.close(fd)
        raise


def _create(dirfd: int, name: str, what: str, shown: str, kind: str) -> None:
    """Create ``name`` in ``dirfd`` (which was resolved inside the root); it may race: EEXIST."""
    try:
        if what == "dir":
            os.mkdir(name, 0o755, dir_fd=dirfd)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(name, flags, 0o644, dir_fd=dirfd))
    except OSError as e:
        if e.errno != EEXIST:
            raise Failure(kind, e.errno or 0, 0, f"{shown} (creating the mount point)") from e


def _pivot(root: str) -> None:
    """Make ``root`` the new ``/`` (pivot_root(2), the ``"."``/``"."`` idiom), old root gone."""
    _step("pivot_root", root, _linux.mount, root, root, None, _linux.MS_BIND | _linux.MS_REC)
    _step("pivot_root", root, os.chdir, root)
    _step("pivot_root", root, _linux.pivot_root, ".", ".")
    _step("pivot_root", root, _linux.umount2, ".", _linux.MNT_DETACH)
    _step("pivot_root", root, os.chdir, "/")
