"""The trial: a candidate build run as the registered child ``post-update OLD NEW`` before it
is installed, in its own session, under a time limit, its output in a log."""

from __future__ import annotations

import os
import signal
import subprocess

from selfupdate._names import TRIAL_ENTRY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

__all__ = ["Trial"]


class Trial:
    """The running trial of ``program`` (a context manager: leaving kills what is left of it).

    Starting it never raises for the child itself: a program that cannot be started is a
    failed trial (:attr:`failure`).

    Raises:
        OSError: the log file cannot be written.
    """

    def __init__(self, program: Path, old: str, new: str, log_path: Path) -> None:
        import reexec_core

        self.failure: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        try:
            self._log.write(f"# {program} {TRIAL_ENTRY} {old} {new}\n".encode())
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
        if status < 0:
            try:
                name = signal.Signals(-status).name
            except ValueError:
                name = f"signal {-status}"
            return f"was killed by {name} during its migration and health check"
        if status == 127:
            return f"exited with status 127 (it does not know the {TRIAL_ENTRY} entry point)"
        return f"exited with status {status} during its migration and health check"

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
