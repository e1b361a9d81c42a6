"""Whether a directory belongs to this user: the one trust check for ``SHIV_ROOT`` and its
extractions.

shiv runs whatever it finds in ``ROOT/NAME_BUILDID/site-packages``. That is safe only if no
other user could have put it there, now or earlier: the directory, and every directory above
it, must be owned by the effective user or root, and writable by nobody else -- an ancestor
may be writable by others when it is sticky (``/tmp``: only an entry's owner may rename or
remove it), the directory itself may not.

The path is resolved component by component, as the kernel would (``lstat`` of each step,
symbolic links followed by hand): each symbolic link on the way must itself be owned by the
effective user or root and lie in a directory that passes the ancestor rule, because whoever
may replace a link decides where the path goes -- for shiv too, which is handed the unresolved
``$SHIV_ROOT``. The resolved path is what the caller should use from then on.

Standard library only, and nothing from :mod:`selfupdate`: a boot gate that runs before shiv's
bootstrap can carry this very file.
"""

from __future__ import annotations

import os
import stat

__all__ = [
    "UntrustedDirectoryError",
    "check_tree",
    "close_dir",
    "open_private_lock",
    "private_dir",
]

#: What a message tells the user to do when ``SHIV_ROOT`` is not private.
ROOT_REMEDY = "set SHIV_ROOT to a directory only you can write"
_MAX_LINKS = 40  # as the kernel's MAXSYMLINKS


class UntrustedDirectoryError(OSError):
    """A directory (or one on its way) another user could write: nothing may run from it.

    An ``OSError`` (a failure of the environment, not a bug). ``str()`` is one sentence that
    names the path, why, and what to do.

    Attributes:
        path: the directory refused.
        reason: why, e.g. ``"is writable by other users (mode 0777)"``.
    """

    def __init__(self, message: str, path: str, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


def _owners(*, final: bool) -> tuple[int, ...]:
    if final:
        return os.geteuid(), 0
    return os.geteuid(), 0, *_unmapped_owner()


_unmapped: list[int] = []


def _unmapped_owner() -> tuple[int, ...]:
    """Inside a user namespace, the uid an unmapped owner shows as (the kernel's overflow uid,
    65534): root's ``/``, ``/tmp`` and ``/var/lib`` look like that there. Such an *ancestor* is
    taken as the system's; the directory itself must always be ours. From inside, another
    user's directory on the way shows as the same uid and cannot be told apart: a known limit
    (docs/security.md). Outside a user namespace: nothing to add."""
    if not _unmapped:
        try:
            with open("/proc/self/uid_map", "rb") as f:
                initial = f.read().split() == [b"0", b"0", b"4294967295"]
            with open("/proc/sys/kernel/overflowuid", "rb") as f:
                overflow = int(f.read())
        except (OSError, ValueError):
            initial, overflow = True, -1
        _unmapped.append(-1 if initial else overflow)
    return () if _unmapped[0] < 0 else (_unmapped[0],)


def _problem(st: os.stat_result, *, final: bool) -> str | None:
    """Why a directory with this ``lstat`` cannot be trusted (None: it can)."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid not in _owners(final=final):
        return f"belongs to another user (uid {st.st_uid})"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and (final or not mode & stat.S_ISVTX):
        sticky = "" if final else ", not sticky"
        return f"is writable by other users (mode {mode:04o}{sticky})"
    return None


def private_dir(
    path: str | os.PathLike[str],
    what: str = "SHIV_ROOT",
    *,
    create: bool = False,
    remedy: str = ROOT_REMEDY,
    risk: str = "extraction there could run another user's code",
) -> str:
    """Check that ``path`` is a directory only the effective user (or root) can change.

    Args:
        path: the directory (relative paths are taken from the current directory).
        what: how messages name it (``"SHIV_ROOT"``).
        create: make missing directories (mode 0700) instead of raising FileNotFoundError.
        remedy: the "what to do" end of a message.
        risk: what could go wrong, the middle of a message.

    Returns:
        The resolved absolute path (use it, not ``path``, from then on).

    Raises:
        UntrustedDirectoryError: it, an ancestor or a symbolic link on the way fails the rules.
        FileNotFoundError: it (or an ancestor) does not exist and ``create`` is False.
        OSError: from ``lstat``/``mkdir`` (permission denied, say).
    """
    given = os.fspath(path)
    # Not abspath(): it would fold "link/.." as text, where the kernel (and shiv, which gets
    # the path as it is) goes up from the link's target. The walk resolves ".." itself.
    todo = [p for p in os.path.join(os.getcwd(), given).split("/") if p]
    todo.reverse()  # a stack: the next component last
    current = "/"
    links = 0

    def refuse(where: str, reason: str, how: str = "is inside") -> UntrustedDirectoryError:
        if how == "final":
            shown = given if where == os.path.abspath(given) else f"{given} ({where})"
            msg = f"{what} {shown} {reason}"
        else:
            msg = f"{what} {given} {how} {where}, which {reason}"
        return UntrustedDirectoryError(
            f"{msg}: {risk}; {remedy}", given, reason
        )

    why = _problem(os.lstat(current), final=False) if todo else None
    if why:
        raise refuse(current, why)
    while todo:
        name = todo.pop()
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)  # already checked on the way down
            continue
        step = os.path.join(current, name)
        try:
            st = os.lstat(step)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(step, 0o700)
            except FileExistsError:
                pass  # another start made it meanwhile: checked like any other below
            st = os.lstat(step)
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in _owners(final=False):
                raise refuse(step, f"is a symbolic link owned by another user (uid {st.st_uid})",
                             "goes through")
            links += 1
            if links > _MAX_LINKS:
                raise refuse(step, "is one symbolic link too many", "goes through")
            target = os.readlink(step)
            if target.startswith("/"):
                current = "/"
            todo.extend(reversed([p for p in target.split("/") if p]))
            continue
        current = step
        why = _problem(st, final=False) if todo else None  # the last one: checked below
        if why:
            raise refuse(step, why)
    # The end of the walk is the directory itself: writable by nobody else, sticky or not.
    why = _problem(os.lstat(current), final=True)
    if why:
        raise refuse(current, why, "final")
    return current


def check_tree(path: str, what: str, remedy: str, *, modes: bool = True) -> None:
    """Check everything under the directory ``path``: no symbolic link, nothing owned by
    another user, and (``modes``) nothing writable by group or others.

    ``modes=False`` is for a tree inside a root that is closed to others (:func:`close_dir`):
    nobody else can reach its entries, whatever their modes (a ``__pycache__`` that Python made
    0775 under a umask of 002, say).

    Raises:
        UntrustedDirectoryError: the first entry that fails, named in the message.
        OSError: from reading the directories.
    """
    owners = _owners(final=True)
    stack = [path]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                reason = None
                if stat.S_ISLNK(st.st_mode):
                    reason = "is a symbolic link"
                elif st.st_uid not in owners:
                    reason = f"belongs to another user (uid {st.st_uid})"
                elif modes and st.st_mode & 0o022:
                    reason = f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
                if reason:
                    raise UntrustedDirectoryError(
                        f"{what} {path} holds {entry.path}, which {reason}: running from it "
                        f"could run another user's code; {remedy}",
                        path,
                        reason,
                    )
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)


def close_dir(path: str) -> bool:
    """Make the directory ``path`` (one that passed :func:`private_dir`) reachable by its owner
    only: mode 0700 when it is this user's and allows group or others anything.

    An extraction root that others may enter (``~/.shiv`` made 0755 by plain shiv, say) lets
    them reach whatever in it a loose umask left writable, and open its lock files; closed,
    nothing below it is theirs to reach. The caller checks what is already inside with
    :func:`check_tree` (``modes=True``) *before* closing: closing does not undo what another
    user may have done while it was open.

    Returns:
        True when nobody but the owner (and root) can reach into it now.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not st.st_mode & 0o077:
            return True
        if st.st_uid != os.geteuid():
            return False  # root's, and we are not root: it stays as root made it
        os.fchmod(fd, 0o700)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def open_private_lock(dir_fd: int, name: str, flags: int = os.O_RDONLY) -> int:
    """Open the lock file ``name`` in the directory ``dir_fd``, creating it 0600.

    Only this user (and root) can open the file, so only they can hold its ``flock``: another
    user cannot make a start or an update wait. A file there that another user could have
    opened (a lock made 0644 by an older version, one owned by someone else, a symbolic link,
    not a regular file) is first replaced by a fresh one (``rename`` over it): whoever holds the
    old one then holds nothing anyone waits for. Never follows a symbolic link
    (``O_NOFOLLOW``); ``O_NONBLOCK`` so that a FIFO cannot hang the open.

    Raises:
        OSError: it cannot be opened or replaced (read-only directory, say).
    """
    import errno
    import stat

    for _ in range(3):
        try:
            fd = os.open(
                name, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600,
                dir_fd=dir_fd,
            )
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
        else:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not (
                st.st_mode & 0o077
            ):
                return fd
            os.close(fd)
        tmp = f".{name}.{os.getpid()}.new"
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dir_fd))
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    raise OSError(errno.EAGAIN, f"the lock file {name} keeps being replaced")
