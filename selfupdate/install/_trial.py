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
    from typing import BinaryIO

__all__ = [
    "BuildConfig",
    "Trial",
    "build_refusal",
    "log_tail",
    "open_log",
    "read_build_config",
    "same_version",
]

# Where ``selfupdate build`` writes the release configuration inside the archive (the same
# names as selfupdate._release and selfupdate.releases._archive, which the publisher reads).
_CONFIG_PATH = "site-packages/selfupdate/_build_config.py"
_ROOT_PATH = "site-packages/selfupdate/_release_root.json"
_MAX_CONFIG_BYTES = 64 * 1024  # the generated module is a few hundred bytes


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

    def __init__(
        self, program: Path, old: str, new: str, log_path: Path, preface: list[str] | None = None
    ) -> None:
        import reexec_core

        self.failure: str | None = None
        self.refused = False
        self.timed_out = False
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = open_log(log_path)
        try:
            header = f"# {program} {TRIAL_ENTRY} {old} {new}\n"
            # preface: what ran before the trial, for the log (a downgrade's down-migrations)
            header += "".join(line + "\n" for line in preface or [])
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
            self.timed_out = True
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


def open_log(log_path: Path) -> BinaryIO:
    """A new, empty log at ``log_path`` (0600, open for writing): created under a unique name
    (``O_EXCL``) and renamed over ``log_path``, so whatever was there (a symlink, another file)
    is replaced, never followed or truncated.

    Raises:
        OSError: it cannot be created.
    """
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=log_path.parent, prefix=f".{log_path.name}.")
    try:
        os.replace(tmp, log_path)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return os.fdopen(fd, "wb")


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


def log_tail(log: Path, lines: int = 3, width: int = 200) -> str:
    """The last ``lines`` non-empty lines of the trial's log, joined by `` | `` and trimmed to
    ``width`` characters (for a one-sentence message); ``""`` when there are none.

    A Python traceback gives only its last line (the exception): its frames (indented lines
    and the ``Traceback`` header) are long paths that would crowd out what went wrong."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [
        " ".join(ln.split())
        for ln in text.splitlines()[1:]
        if ln.strip() and not ln[0].isspace() and not ln.startswith("Traceback (")
    ]
    # the header line ("# PROGRAM post-update OLD NEW") is ours, not the build's
    kept = [ln for ln in kept if not ln.startswith("# ")][-lines:]
    out = " | ".join(kept)
    return out if len(out) <= width else "..." + out[-(width - 3):]


class BuildConfig:
    """What a build says about itself (``selfupdate build``'s embedded configuration)."""

    __slots__ = ("app", "version", "repo_url", "has_root")

    def __init__(self, app: str, version: str, repo_url: str | None, has_root: bool) -> None:
        self.app, self.version, self.repo_url, self.has_root = app, version, repo_url, has_root


def read_build_config(path: Path) -> BuildConfig | None:
    """The release configuration embedded in the build at ``path``, read without running any
    of it (:mod:`ast`, literals only, capped); None when it carries none (not a zip archive,
    or not made by ``selfupdate build``, or not plain literals).

    Raises:
        OSError: the file could not be read (EIO, EMFILE, ...): that says nothing about the
            build, so it is no answer either way.
    """
    import ast
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if _CONFIG_PATH not in names:
                return None
            with z.open(_CONFIG_PATH) as f:
                source = f.read(_MAX_CONFIG_BYTES + 1)
            has_root_file = _ROOT_PATH in names and z.getinfo(_ROOT_PATH).file_size > 0
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError,
            ValueError):
        return None  # what is there is no archive of ours (a plain script build, say)
    except OSError as e:
        if e.filename is None:  # a read, not the open: say which file
            e.filename = str(path)
        raise
    if len(source) > _MAX_CONFIG_BYTES:
        return None
    values: dict[str, object] = {}
    try:
        for node in ast.parse(source).body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
    app, version, url = values.get("APP"), values.get("VERSION"), values.get("REPO_URL")
    if not isinstance(app, str) or not isinstance(version, str):
        return None
    return BuildConfig(
        app, version, url if isinstance(url, str) and url else None,
        values.get("TRUSTED_ROOT") is True and has_root_file,
    )


def build_refusal(
    candidate: Path, installed: Path, app: str | None, version: str
) -> str | None:
    """Why the candidate build must fail its trial before it runs, or None (for a sentence
    "the new build VERSION <why>").

    It must call itself the app and version it was released as (else it would be offered again
    forever, or replace the app with another), and carry what it needs to update again (an
    embedded trusted root and repository URL). A candidate with no embedded configuration at
    all is checked only when the installed build has one (a plain script "build" has none).

    Raises:
        OSError: either build could not be read (no verdict on the release).
    """
    cand = read_build_config(candidate)
    if cand is None:
        if read_build_config(installed) is None:
            return None
        return ("carries no release configuration (it was not made by `selfupdate build`), so "
                "it could never update again")
    if app is not None and cand.app != app:
        return f"is a build of {cand.app!r}, not of {app!r}"
    if not same_version(cand.version, version):
        return (f"calls itself version {cand.version}, not {version} as released, so it would "
                "be offered again at every update")
    if not cand.has_root:
        return "embeds no trusted root, so once installed it could never verify an update"
    if cand.repo_url is None:
        return "embeds no release repository URL, so once installed it could never update again"
    return None


def same_version(a: str, b: str) -> bool:
    """PEP 440 equality for the usual spellings, without ``packaging`` (stdlib only here):
    case, a leading ``v`` and trailing ``.0`` release segments do not count (1.0 == 1.0.0)."""
    import re

    def norm(v: str) -> str:
        v = v.strip().lower().removeprefix("v")
        m = re.match(r"^(\d+(?:\.\d+)*)(.*)$", v)
        if m is None:
            return v
        release = m.group(1).split(".")
        while len(release) > 1 and release[-1].isdigit() and int(release[-1]) == 0:
            release.pop()
        return ".".join(str(int(x)) for x in release) + m.group(2)

    return a == b or norm(a) == norm(b)
