"""The staged download: a new file beside the installed one, written unbuffered, made durable
while the trial runs."""

from __future__ import annotations

import errno
import io
import os

from selfupdate._durable import fsync_dir
from selfupdate.errors import InstallError
from selfupdate.install._layout import Layout, dir_error, remove

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO, Protocol

    class ClientLike(Protocol):
        """What the installer needs of :class:`selfupdate.releases.client.UpdateClient`."""

        def check(self, current_version: str) -> Any: ...
        def download_to(self, release: Any, fileobj: BinaryIO) -> None: ...

__all__ = ["Staged", "download_plan", "stage_download"]


class _DownloadFile(io.FileIO):
    """The staged file, unbuffered: every ``write`` reaches the kernel whole (short writes are
    continued), so a full disk fails the write that hit it, not a later flush, and a partial
    download can always be truncated."""

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view):
            n = super().write(view[done:])
            if not n:
                raise OSError(errno.EIO, "short write to the download file")
            done += n
        return done


class Staged:
    """A complete staged download: its inode, and its ``fsync`` started in a thread right
    after the download, so the disk writes it while the state snapshot, the extraction seeding
    and the trial run (they need only the page cache). :meth:`wait` finishes it before the
    commit point; :meth:`close` always. Holds a duplicate of the download's file descriptor
    (close-on-exec: the trial does not inherit it)."""

    def __init__(self, fd: int, ino: int) -> None:
        import threading

        self.ino = ino
        self._fd = os.dup(fd)
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="fsync-staged", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as e:
            self._error = e

    def wait(self) -> None:
        """Return once the staged file is on disk (data, size and mode); raise its OSError."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        os.fsync(self._fd)  # what changed since the first fsync (the mode): cheap

    def close(self) -> None:
        self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def download_plan(client: ClientLike, release: Any, installed: Any) -> Any:
    """What the update will download (a delta or the whole build, with its size; see
    :mod:`selfupdate.releases._delta_client`), or None for a client that only has
    ``download_to``."""
    import sys

    framework = sys.modules.get("selfupdate.releases.client")  # loaded if the client is one
    if framework is None or not isinstance(client, framework.UpdateClient):
        return None
    from selfupdate.releases import _delta_client

    return _delta_client.plan_download(client, release, installed)


def stage_download(
    layout: Layout, client: ClientLike, release: Any, mode: int, plan: Any = None,
    say: Callable[[str], None] | None = None,
) -> Staged:
    """Download ``release`` into :attr:`Layout.staged`, created exclusively and without
    following a symlink (``O_CREAT|O_EXCL|O_NOFOLLOW``) in a staging directory made afresh
    (mode 0700), and give it ``mode``. With a ``plan`` (:func:`download_plan`) it may be
    rebuilt from a delta and the installed file instead (``say``: the one line of a fallback
    to the whole build).

    Raises:
        InstallError: the directory is not writable, the disk is full, the size differs from
            the verified length; the staging directory is removed again.
        SelfUpdateError: from the client (verification, network, ...).
    """
    remove(layout.staging)
    try:
        layout.staging.mkdir(mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(layout.staged, flags, 0o600)
    except OSError as e:
        raise dir_error(layout, e, "creating the download file") from e
    staged: Staged | None = None
    try:
        try:
            with _DownloadFile(fd, "wb") as f:
                if plan is None:
                    client.download_to(release, f)
                else:  # a delta rebuilt beside the installed file, or the whole build
                    from selfupdate.releases import _delta_client

                    _delta_client.download(client, plan, f, layout.installed, layout.staging,
                                           say or (lambda _msg: None))
                os.fchmod(f.fileno(), mode)  # by descriptor: the file we wrote, whatever the path
                st = os.fstat(f.fileno())
                staged = Staged(f.fileno(), st.st_ino)
        except OSError as e:
            raise dir_error(layout, e, "download") from e
        expected = getattr(release, "length", None)
        if isinstance(expected, int) and st.st_size != expected:
            raise InstallError(
                f"cannot update {layout.installed}: the download file has {st.st_size} bytes, "
                f"not the {expected} that were verified; nothing was changed, try again"
            )
        fsync_dir(layout.staging)
        return staged
    except BaseException:
        if staged is not None:
            staged.close()
        remove(layout.staging)
        raise
