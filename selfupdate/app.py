"""The app-facing side of in-place updates: migrations, a health check, auto-update, start hook.

An app declares, at import time of its command modules::

    from selfupdate import app as su

    su.configure("nsapp", VERSION, state_dir=my_state_dir, client=make_update_client)

    @su.migration("2.0.0")
    def history_to_jsonl(state_dir: Path) -> str:
        ...                      # change the state; return a line saying what changed

    @su.health_check
    def state_is_readable(state_dir: Path) -> None:
        ...                      # raise if this build cannot work with the state

:func:`configure` registers the reexec entry points ``post-update`` (the trial run of a new
build: migrations for the versions crossed, then the health check) and ``update-finish``
(what the new build runs after the handover, same PID). Its main calls :func:`at_start` after
``reexec_core.init()``: cheap (a ``stat`` when no update was interrupted), it finishes or undoes
an update a ``kill -9`` interrupted and marks this build's shiv extraction as in use.

A long-running command opts in to automatic updates with :func:`start_auto_update`: a
background thread checks every ``interval`` seconds and, once an update is committed, execs the
new build with the process's original arguments (same PID).

Nothing here imports ``tuf``, ``requests``, ``cryptography`` or ``packaging`` at import time.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    Migration = Callable[[Path], str | None]
    HealthCheck = Callable[[Path], None]

__all__ = [
    "at_start",
    "configure",
    "health_check",
    "installed_path",
    "migration",
    "migrations_between",
    "start_auto_update",
    "update",
    "rollback",
]

#: Entry point names: the trial run of a new build, and the new build after the handover.
TRIAL_ENTRY = "post-update"
FINISH_ENTRY = "update-finish"

#: Name of the shared-lock file each running build holds in its shiv extraction directory.
INUSE_LOCK = ".in-use.lock"

# The process's own arguments, as it was started (auto-update re-execs with them).
_ORIGINAL_ARGS: list[str] = list(sys.argv[1:])


class _Config:
    name: str = ""
    version: str = ""
    state_dir: Callable[[], Path] | None = None
    client: Callable[[str | None], Any] | None = None
    trial_timeout: float = 60.0
    migrations: dict[str, Migration] = {}
    health_checks: list[HealthCheck] = []
    inuse_fd: int | None = None


_cfg = _Config()


def configure(
    name: str,
    version: str,
    *,
    state_dir: Callable[[], Path],
    client: Callable[[str | None], Any],
    trial_timeout: float | None = None,
) -> None:
    """Declare the app and register the ``post-update`` and ``update-finish`` entry points.

    Call once, at import time (before ``reexec_core.init()``).

    Args:
        name: the app's name (for messages).
        version: this build's version (PEP 440).
        state_dir: returns the app's state directory (snapshotted around an update).
        client: ``client(repo_url_or_None) -> UpdateClient``; called only when updating, so the
            heavy imports happen there.
        trial_timeout: seconds a new build's trial may take (default 60, or
            ``$SELFUPDATE_TRIAL_TIMEOUT``).

    Raises:
        ValueError: called twice (the entry points are already registered).
    """
    import reexec_core

    reexec_core.register(TRIAL_ENTRY, _post_update)
    reexec_core.register(FINISH_ENTRY, _update_finish)
    _cfg.name, _cfg.version, _cfg.state_dir, _cfg.client = name, version, state_dir, client
    env_timeout = os.environ.get("SELFUPDATE_TRIAL_TIMEOUT")
    if trial_timeout is not None:
        _cfg.trial_timeout = trial_timeout
    elif env_timeout:
        _cfg.trial_timeout = float(env_timeout)


def migration(version: str) -> Callable[[Migration], Migration]:
    """Register ``fn(state_dir) -> str | None`` to run when an update crosses ``version``.

    A migration for version V runs when updating from a version below V to V or above, in
    version order. It may print or return a line describing what it changed. If it raises,
    the update fails and the state directory is restored.
    """

    def deco(fn: Migration) -> Migration:
        if version in _cfg.migrations:
            raise ValueError(f"a migration for version {version} is already registered")
        _cfg.migrations[version] = fn
        return fn

    return deco


def health_check(fn: HealthCheck) -> HealthCheck:
    """Register ``fn(state_dir)``: run after the migrations in the trial; raise to fail it."""
    _cfg.health_checks.append(fn)
    return fn


def migrations_between(old: str, new: str, versions: list[str]) -> list[str]:
    """The registered versions an update from ``old`` to ``new`` crosses, in order (pure).

    ``old < v <= new`` in PEP 440 order, local labels ignored (``2.0.0+x`` crosses ``2.0.0``).
    A downgrade (rollback) crosses nothing: its state comes from a snapshot.
    """
    from packaging.version import InvalidVersion, Version

    try:
        lo, hi = Version(old), Version(new)
    except InvalidVersion:
        return []
    lo_p, hi_p = Version(lo.public), Version(hi.public)
    crossed = [v for v in versions if lo_p < Version(v) <= hi_p]
    return sorted(crossed, key=Version)


# --------------------------------------------------------------------------------------------
# Entry points run by the new build


def _state_dir() -> Path:
    if _cfg.state_dir is None:
        raise RuntimeError("selfupdate.app.configure() was not called")
    return _cfg.state_dir()


def _post_update(old: str, new: str) -> int:
    """``post-update OLD NEW``: migrations crossed, then the health check; status 0 = good."""
    state = _state_dir()
    print(f"post-update {old} -> {new} (this build: {_cfg.version}, state: {state})", flush=True)
    for v in migrations_between(old, new, list(_cfg.migrations)):
        fn = _cfg.migrations[v]
        try:
            what = fn(state)
        except Exception as e:
            import traceback

            traceback.print_exc(file=sys.stdout)
            print(f"FAILED: migration {v} ({fn.__name__}): {e}", flush=True)
            return 1
        print(f"migration {v}: {what or fn.__name__}", flush=True)
    for check in _cfg.health_checks:
        try:
            check(state)
        except Exception as e:
            import traceback

            traceback.print_exc(file=sys.stdout)
            print(f"FAILED: health check {check.__name__}: {e}", flush=True)
            return 1
    print("health check passed", flush=True)
    return 0


def _update_finish(old: str, new: str, log: str) -> int:
    """``update-finish OLD NEW LOG``: the new build, same PID, says what changed and tidies."""
    print(f"{_cfg.name} updated {old} -> {new} in place (pid {os.getpid()}, same process)")
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("migration "):
                    print("  " + line.rstrip())
    except OSError:
        pass
    sys.stdout.flush()
    _clean_shiv()
    return 0


# --------------------------------------------------------------------------------------------
# Start hook


def installed_path() -> Path | None:
    """The real path of the running ``.pyz`` (symlinks resolved), or None when not in one."""
    boot = sys.modules.get("_bootstrap")
    archive = getattr(getattr(boot, "__loader__", None), "archive", None)
    if not isinstance(archive, str) or not hasattr(boot, "bootstrap"):
        return None
    from pathlib import Path

    return Path(os.path.realpath(archive))


def _site_packages() -> str | None:
    """This build's shiv ``site-packages`` directory, if it runs from one."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    build_id = os.path.basename(os.path.dirname(here)).rpartition("_")[2]
    if os.path.basename(here) != "site-packages" or len(build_id) != 64:
        return None  # not shiv's ROOT/NAME_BUILDID/site-packages
    return here


def at_start() -> None:
    """App-start hook (call in main after ``reexec_core.init()`` returned False).

    Marks this build's shiv extraction as in use, and finishes or undoes an update that a killed
    updater left half done; if that changed the installed file, starts it again (same PID, same
    arguments) so what runs is what is installed. Costs a few system calls otherwise.
    """
    if os.environ.get("REEXEC_CORE_ENTRY"):
        return
    pyz = installed_path()
    if pyz is None:
        return
    _hold_extraction()
    journal = os.path.join(os.path.dirname(pyz), f".{os.path.basename(pyz)}.journal")
    if not os.path.exists(journal):
        return
    from selfupdate.install import recover_at_start

    if recover_at_start(pyz, _state_dir() if _cfg.state_dir else None):
        _reexec_self()


def _hold_extraction() -> None:
    import fcntl

    sp = _site_packages()
    if sp is None or _cfg.inuse_fd is not None:
        return
    try:
        fd = os.open(
            os.path.join(os.path.dirname(sp), INUSE_LOCK),
            os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC,
            0o644,
        )
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return
    if not os.path.isdir(sp):
        # A cleaner removed this extraction between shiv's check and our lock: start again,
        # and shiv extracts afresh.
        os.close(fd)
        _reexec_self()
    _cfg.inuse_fd = fd


def _reexec_self() -> None:
    import reexec_core

    argv = reexec_core.self_argv() + _ORIGINAL_ARGS
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os.execv(argv[0], argv)


def _clean_shiv() -> None:
    pyz = installed_path()
    if pyz is None:
        return
    from selfupdate.install import Layout, clean_shiv_dirs

    layout = Layout(pyz)
    try:
        clean_shiv_dirs([pyz, layout.previous], pyz.name)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# Update, rollback, auto-update


def _require_pyz() -> Path:
    from selfupdate.install import InstallError

    pyz = installed_path()
    if pyz is None:
        raise InstallError(
            f"{_cfg.name or 'this program'} can update itself only when it runs as a single-file "
            "build (.pyz made by ./build.sh); this one runs from a source checkout"
        )
    return pyz


def update(
    repo_url: str | None = None,
    *,
    check_only: bool = False,
    handover: str = "finish",
    say: Callable[[str], None] | None = None,
) -> Any:
    """Run the update flow for the running ``.pyz`` (see :mod:`selfupdate.install`).

    Args:
        repo_url: release repository (None: the one embedded in the build).
        check_only: only report.
        handover: ``"finish"`` (exec the new build as ``update-finish``: it prints what
            changed), ``"argv"`` (exec it with this process's original arguments) or
            ``"none"`` (return; the new build runs from the next start).
        say: progress messages.

    Returns:
        :class:`selfupdate.install.Outcome` when no handover happened.

    Raises:
        selfupdate.errors.SelfUpdateError: every failure, with a one-sentence message.
    """
    import reexec_core
    from selfupdate import install

    pyz = _require_pyz()
    client = _cfg.client(repo_url) if _cfg.client is not None else None
    if client is None:
        raise RuntimeError("selfupdate.app.configure() was not called with a client")

    def do_handover(old: str, new: str, log: Path) -> None:
        if handover == "finish":
            # The new build says what changed and cleans shiv's directories (same PID).
            reexec_core.exec_into(FINISH_ENTRY, old, new, str(log), program=pyz)
        elif handover == "argv":
            _clean_shiv()
            _reexec_self()

    try:
        return install.update(
            pyz, client, _cfg.version, _state_dir(),
            check_only=check_only, trial_timeout=_cfg.trial_timeout,
            handover=None if handover == "none" else do_handover, say=say,
        )
    except install.TrialFailedError:
        _clean_shiv()
        raise


def rollback() -> str:
    """Put the previous build back (atomically, after its health check), its state restored.

    Returns:
        The version now installed.
    """
    from selfupdate import install

    pyz = _require_pyz()
    version = install.rollback(pyz, _cfg.version, _state_dir(), trial_timeout=_cfg.trial_timeout)
    _clean_shiv()
    return version


def start_auto_update(
    interval: float,
    repo_url: str | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> Any:
    """Check for updates every ``interval`` seconds in a daemon thread; on a committed update,
    exec the new build with this process's original arguments (same PID).

    Failures are logged (each distinct message once) and the command keeps running.

    Returns:
        The started ``threading.Thread``.
    """
    import threading
    import time

    from selfupdate.errors import SelfUpdateError

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    seen: set[str] = set()

    def loop() -> None:
        while True:
            time.sleep(interval)
            try:
                update(repo_url, handover="argv")
            except SelfUpdateError as e:
                msg = str(e)
                if msg not in seen:
                    seen.add(msg)
                    say(f"auto-update: {msg}")
            except Exception as e:  # keep serving whatever the updater hit
                say(f"auto-update: unexpected error: {e!r}")

    thread = threading.Thread(target=loop, name="auto-update", daemon=True)
    thread.start()
    return thread
