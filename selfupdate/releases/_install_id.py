"""This machine's install ID: the stable random number a phased rollout places it by.

Made on first use (only when a release is being rolled out to a share between 0 and 100%)
and kept in the app's state directory as ``install-id``: 32 hex digits, mode 0600. Written
atomically (a temporary file, ``fsync``, then ``link(2)``, which fails if another process made
one meanwhile: the first writer wins and both use its ID); read without following a symlink
(``O_NOFOLLOW``) and only from a regular file, so a link or FIFO planted under the name is
never followed or blocked on: it is replaced by a fresh ID. ``SELFUPDATE_INSTALL_ID``
overrides the file (fleet tools and simulations).

The ID decides only *when* this machine is offered a release, never *what* it installs
(every byte is still verified): whoever can write the state directory can move the machine
forward or back in a rollout, nothing more.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from selfupdate import _durable, errors
from selfupdate.releases._rollout import INSTALL_ID_ENV, check_install_id

__all__ = ["FILE_NAME", "lazy_install_id", "read_or_make"]

FILE_NAME = "install-id"


def lazy_install_id(explicit: str | None, state_dir: Path) -> Callable[[], str]:
    """A function that returns the install ID (``explicit``, else ``$SELFUPDATE_INSTALL_ID``,
    else the one kept in ``state_dir``), reading or making it on its first call only.

    Raises (when called):
        selfupdate.errors.ConfigError: the ID given is malformed, or none can be kept.
    """
    known: list[str] = []

    def get() -> str:
        if not known:
            known.append(_resolve(explicit, state_dir))
        return known[0]

    return get


def _resolve(explicit: str | None, state_dir: Path) -> str:
    for source, value in (("the install_id given", explicit),
                          (INSTALL_ID_ENV, os.environ.get(INSTALL_ID_ENV))):  # fmt: skip
        if value:
            try:
                return check_install_id(value)
            except ValueError as e:
                raise errors.ConfigError(f"{source}: {e}: fix or unset it") from None
    return read_or_make(state_dir / FILE_NAME)


def read_or_make(path: Path) -> str:
    """The ID kept in ``path``, made there first if it holds none (see the module docstring).

    Raises:
        selfupdate.errors.ConfigError: it cannot be kept (a directory that cannot be written).
    """
    try:
        found = _read(path)
        if found is not None:
            return found
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        new = secrets.token_hex(16)
        if _link_new(path, new):
            return new
        return _read(path) or new
    except OSError as e:
        raise errors.ConfigError(
            f"could not keep this machine's install ID in {path} ({e.strerror or e}), which a "
            "phased rollout needs: make the directory writable or set "
            f"{INSTALL_ID_ENV}"
        ) from e


def _read(path: Path) -> str | None:
    """The valid ID in the regular file ``path``, or None (missing, a link, junk)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink under the name is never followed
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 256).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    try:
        return check_install_id(text)
    except ValueError:
        return None


def _link_new(path: Path, value: str) -> bool:
    """Put ``value`` at ``path``: linked if nothing is there (first writer wins: False when
    another process linked one meanwhile), else replacing what is there (a link, junk)."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
            f.flush()
            os.fchmod(f.fileno(), 0o600)
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            if _read(path) is not None:
                return False  # another process was first: use its ID
            os.replace(tmp, path)  # a planted link or junk: replaced, never followed
    finally:
        Path(tmp).unlink(missing_ok=True)
    _durable.fsync_dir(path.parent)
    return True
