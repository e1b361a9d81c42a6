"""The protocol between the runner and the processes that set the namespaces up, in one place.

Two pipes, made by the runner before it clones, forks or starts the setup process:

* the *error pipe*, setup side -> runner, close-on-exec, so that a successful exec of the
  workload reads as EOF. The setup side writes on it:

  - :data:`MAP_REQUEST` (``M``): "write my uid/gid maps now" -- the runner owns the parent user
    namespace, so it may write maps the child may not write itself (ranges, or a root
    caller's); the answer comes on the ack pipe;
  - a failure report, ``E op NUL errno NUL flags NUL detail`` (:func:`report`), after which
    the writer exits; the runner turns it into the typed error (``errors.error_for``).

* the *ack pipe*, runner -> setup side: the answer to a map request, one byte,
  :data:`MAPS_WRITTEN` or :data:`MAPS_FAILED` (the runner then raises the error itself). EOF
  there means the runner is gone: it is the pipe's only writer (:func:`peer_gone`).

A threaded caller's setup process is a fresh interpreter: its spec (which may hold ``env=``
secrets) reaches it on a third descriptor, a memfd (:func:`spec_fd`, :func:`read_spec`),
never on its command line, which every user may read in ``/proc/PID/cmdline``.

On the clone path the child asks for its maps whenever it has a user namespace and goes on
with its setup meanwhile, so a failure may follow the request at once; on the fork path only
for ranges (and a root caller's maps), and the child waits for the answer.
"""

from __future__ import annotations

import os

__all__ = [
    "MAPS_FAILED",
    "MAPS_WRITTEN",
    "MAP_REQUEST",
    "READ_SIZE",
    "Failure",
    "crashed",
    "decode",
    "peer_gone",
    "read_answer",
    "read_spec",
    "report",
    "request_maps",
    "spec_fd",
]

#: Setup side -> runner, on the error pipe: write my uid/gid maps.
MAP_REQUEST = b"M"
#: Runner -> setup side, on the ack pipe: the maps are written.
MAPS_WRITTEN = b"\0"
#: Runner -> setup side, on the ack pipe: writing them failed; the runner raises the error.
MAPS_FAILED = b"E"
#: The first byte of a failure report on the error pipe; its fields are NUL-separated.
_FAILURE = "E"
_SEP = "\0"
#: How much the runner reads from the error pipe at a time.
READ_SIZE = 65536


class Failure(Exception):
    """A setup step failed: what the runner needs to raise the typed error, as sent on the wire.

    Attributes:
        op: the operation (``"unshare"``, ``"mount"``, ``"exec"``, ... see ``errors.error_for``).
        errno: the kernel's errno, or 0.
        flags: for unshare/setns, the clone flags asked for.
        detail: what the operation was applied to.
    """

    def __init__(self, op: str, errno: int, flags: int = 0, detail: str = "") -> None:
        super().__init__(op)
        self.op, self.errno, self.flags, self.detail = op, errno, flags, detail


def crashed(who: str, e: BaseException) -> Failure:
    """A bug (not a refusal) in a setup process, described for the runner's error."""
    return Failure("start", 0, 0, f"{who} ({type(e).__name__}: {e})")


def report(errfd: int, failure: Failure) -> None:
    """Send a failure to the runner over the error pipe (a runner that is gone is ignored)."""
    fields = (failure.op, str(failure.errno), str(failure.flags), failure.detail)
    msg = (_FAILURE + _SEP.join(fields)).encode("utf-8", "surrogateescape")
    try:
        os.write(errfd, msg)
    except OSError:
        pass


def decode(data: bytes) -> Failure | None:
    """Decode a failure report read from the error pipe; None for no report (EOF at once)."""
    if not data:
        return None
    op, errno, flags, detail = data[1:].decode("utf-8", "surrogateescape").split(_SEP, 3)
    return Failure(op, int(errno), int(flags), detail)


def request_maps(errfd: int) -> None:
    """Setup side: ask the runner to write this process's uid/gid maps."""
    os.write(errfd, MAP_REQUEST)


def read_answer(ackfd: int) -> bytes:
    """Setup side: wait for the answer to :func:`request_maps` (``b""``: the runner is gone)."""
    return os.read(ackfd, 1)


def peer_gone(fd: int) -> bool:
    """Is the only writer of the pipe ``fd`` reads gone (EOF)? Never blocks.

    A process whose parent lies outside its PID namespace sees ``getppid() == 0`` and cannot
    check its parent that way: a pipe the parent holds open and never writes to does it.
    """
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1) == b""
    except BlockingIOError:
        return False


def spec_fd(text: str) -> int:
    """Runner side: a memfd holding ``text`` (the spec's JSON), at offset 0, close-on-exec."""
    fd = os.memfd_create("reexec-core-spec", os.MFD_CLOEXEC)
    try:
        view = memoryview(text.encode("utf-8", "surrogateescape"))
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_spec(fd: int) -> str:
    """Setup side: the spec's JSON from the descriptor :func:`spec_fd` made; closes it."""
    chunks = []
    try:
        while chunk := os.read(fd, READ_SIZE):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "surrogateescape")
