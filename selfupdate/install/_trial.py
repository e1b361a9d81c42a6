"""The trial: a candidate build run as the registered child ``post-update OLD NEW`` before it
is installed, in its own session, under a time limit, its output in a log."""

from __future__ import annotations

import os
import signal
import subprocess

from selfupdate._names import TRIAL_ENTRY, TRIAL_REFUSED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

__all__ = ["Trial"]


class Trial:
    """The running trial of ``program`` (a context manager: leaving kills what is left of it).

    Starting it never raises for the child itself: a program that cannot be started is a
    failed trial (:attr:`failure`). After :meth:`wait`, :attr:`refused` says whether the build
    itself refused (its migration or health check failed: exit status
    :data:`~selfupdate._names.TRIAL_REFUSED`), the only outcome that is a verdict on it.

    The log is created afresh (``O_EXCL``, 0600, under a unique name) and renamed over
    ``log_path``: whatever was at that name (a symlink, another file) is replaced, never
    followed or truncated.

    Raises:
        OSError: the log file cannot be written.
    """

    def __init__(self, program: Path, old: str, new: str, log_path: Path) -> None:
        import tempfile

        import reexec_core

        self.failure: str | None = None
        self.refused = False
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        fd, tmp = tempfile.mkstemp(dir=log_path.parent, prefix=f".{log_path.name}.")
        try:
            os.replace(tmp, log_path)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        self._log = os.fdopen(fd, "wb")
        try:
            header = f"# {program} {TRIAL_ENTRY} {old} {new}\n"
            self._log.write(header.encode("utf-8", "surrogateescape"))  # odd bytes in paths
            self._log.flush()
            try:
                self._proc = reexec_core.command(TRIAL_ENTRY, old, new, program=program).popen(
                    stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                self.failure = f"could not be started ({e.strerror})"
        except BaseException:
            self.close()
            raise

    def wait(self, timeout: float) -> str | None:
        """Wait for the trial; return None when it passed, else what failed (for a sentence
        "the new build X <what failed>")."""
        proc = self._proc
        if proc is None:
            return self.failure
        try:
            status = _wait(proc, timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            return f"did not finish its migration and health check within {timeout:g} seconds"
        finally:
            _kill_group(proc.pid)  # whatever the trial started goes with it
        if status == 0:
            return None
        if status == TRIAL_REFUSED:
            self.refused = True
            return "failed its migration and health check"
        if status < 0:
            try:
                name = signal.Signals(-status).name
            except ValueError:
                name = f"signal {-status}"
            return f"was killed by {name} before it finished its migration and health check"
        if status == 127:
            return f"exited with status 127 (it does not know the {TRIAL_ENTRY} entry point)"
        reason = _os_error_in(self._log_path)
        if reason is not None:
            return f"could not run its migration and health check ({reason})"
        return f"exited with status {status} before it finished its migration and health check"

    def close(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            _kill_group(self._proc.pid)
            self._proc.wait()
        self._log.close()

    def __enter__(self) -> Trial:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """``proc.wait(timeout)`` without its polling (sleeps of up to 50 ms between checks, i.e.
    up to 50 ms lost after the trial ended): block on a pidfd until the child exits."""
    import select

    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout=timeout)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    return proc.wait()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _os_error_in(log: Path) -> str | None:
    """The environment's fault, if the end of the trial's log names one (a full disk while
    shiv extracts the build, a read-only or unwritable place): ``"No space left on device"``.

    Named either as Python does (``[Errno 28] No space left on device``, in a traceback) or as
    the build's boot gate does (selfupdate._shiv._boot: ``...: No space left on device; what
    to do``)."""
    import errno

    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EMFILE):
        text = os.strerror(code)
        if f"[Errno {code}] {text}" in tail or f": {text}; " in tail:
            return text
    return None
