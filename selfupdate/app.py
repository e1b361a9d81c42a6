"""The app-facing side of in-place updates: migrations, a health check, update, rollback,
auto-update, the start hook.

An app declares, at import time of its command modules::

    from selfupdate import app as su

    su.configure("myapp", VERSION, state_dir=my_state_dir, client=make_update_client)

    @su.migration("2.0.0")
    def history_to_jsonl(state_dir: Path) -> str:
        ...                      # change the state; return a line saying what changed

    @su.down_migration("2.0.0")  # optional: undoes it on `update --to` a version below 2.0.0
    def history_to_text(state_dir: Path) -> str:
        ...

    @su.health_check
    def state_is_readable(state_dir: Path) -> None:
        ...                      # raise if this build cannot work with the state

:func:`configure` registers the reexec entry points ``post-update`` (the trial run of a new
build: migrations for the versions crossed, then the health check) and ``update-finish``
(what the new build runs after the handover, same PID). Its main calls :func:`at_start` after
``reexec_core.init()``: cheap (a ``stat`` when no update was interrupted), it finishes or undoes
an update a ``kill -9`` interrupted and marks this build's shiv extraction as in use.

:func:`update` runs :func:`selfupdate.install.update`, which returns once the new build is
committed, and then execs the new build (same PID). A long-running command opts in to automatic
updates with :func:`start_auto_update`: a background thread checks every ``interval`` seconds
and, once an update is committed, execs the new build with the process's original arguments.

This module is the top of the package: it uses :mod:`selfupdate.install`,
:mod:`selfupdate._shiv` and (through the app's ``client`` factory) :mod:`selfupdate.releases`;
nothing in the framework imports it. Nothing here imports ``tuf``, ``requests``,
``cryptography`` or ``packaging`` at import time.
"""

from __future__ import annotations

import os
import sys

from selfupdate._migrations import migrations_between
from selfupdate._names import FINISH_ENTRY, TRIAL_ENTRY, TRIAL_REFUSED

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable
    from pathlib import Path

    from selfupdate.install import Outcome
    from selfupdate.install._staging import ClientLike

    Migration = Callable[[Path], str | None]
    HealthCheck = Callable[[Path], None]

__all__ = [
    "at_start",
    "configure",
    "down_migration",
    "version",
    "health_check",
    "installed_path",
    "migration",
    "migrations_between",
    "rollback",
    "start_auto_update",
    "update",
]

# The process's own arguments, as it was started (auto-update re-execs with them).
_ORIGINAL_ARGS: list[str] = list(sys.argv[1:])


class _Config:
    name: str = ""
    version: str = ""
    state_dir: Callable[[], Path] | None = None
    client: Callable[[str | None], ClientLike] | None = None
    trial_timeout: float = 60.0
    trial_timeout_set: bool = False
    migrations: dict[str, Migration] = {}
    down_migrations: dict[str, Migration] = {}
    health_checks: list[HealthCheck] = []


_cfg = _Config()


def configure(
    name: str,
    version: str | None = None,
    *,
    state_dir: Path | str | Callable[[], Path] | None = None,
    client: Callable[[str | None], ClientLike] | None = None,
    trial_timeout: float | None = None,
) -> None:
    """Declare the app and register the ``post-update`` and ``update-finish`` entry points.

    Call once, at import time (before ``reexec_core.init()``). An app built with
    ``selfupdate build`` needs only its name: the version, repository URL, trusted root and
    channel come from the build (:func:`selfupdate.build_info`).

    Args:
        name: the app's name (the program name in what this module prints, and the name of
            its default state and cache directories).
        version: this build's version (PEP 440). Default: the build's; in a checkout, the
            installed distribution ``name``'s.
        state_dir: the app's state directory (snapshotted around an update, restored on a
            failed trial or a rollback): a path, or a callable returning one (called only when
            needed). Default: the platform's state directory for the app
            (``$XDG_STATE_HOME/NAME`` or ``~/.local/state/NAME``).
        client: ``client(repo_url_or_None) -> UpdateClient``; called only when updating. To
            follow another channel (``update(channel=...)``, remembered) it is called with
            ``channel=NAME`` when it takes that keyword, else the client's ``channel`` is set.
            Default: a client for the build's embedded trusted root, repository URL and
            channel, whose TUF metadata cache lives in the platform's cache directory for the
            app (``~/.cache/NAME/tuf``), never in the state directory, so no snapshot holds it.
        trial_timeout: seconds a new build's trial may take (default 60, or
            ``$SELFUPDATE_TRIAL_TIMEOUT``).

    Raises:
        ValueError: called twice (the entry points are already registered), or no version
            given and none can be found.
    """
    import reexec_core

    if version is None:
        version = _own_version(name)
    reexec_core.register(TRIAL_ENTRY, _post_update)
    reexec_core.register(FINISH_ENTRY, _update_finish)
    if state_dir is None:
        state_dir = _default_state_dir
    elif not callable(state_dir):
        from pathlib import Path

        fixed = Path(state_dir)
        state_dir = lambda: fixed  # noqa: E731 - one expression, named by the attribute
    _cfg.name, _cfg.version, _cfg.state_dir = name, version, state_dir
    _cfg.client = client or _default_client
    if trial_timeout is not None:
        _cfg.trial_timeout, _cfg.trial_timeout_set = trial_timeout, True


def _trial_timeout() -> float:
    """configure()'s, else ``$SELFUPDATE_TRIAL_TIMEOUT``, else 60; read when an update runs, so
    a bad value stops the update with a sentence, not every start of the app."""
    from selfupdate.errors import ConfigError

    text = os.environ.get("SELFUPDATE_TRIAL_TIMEOUT")
    if _cfg.trial_timeout_set or not text:
        return _cfg.trial_timeout
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ConfigError(
            f"SELFUPDATE_TRIAL_TIMEOUT={text!r} is not a number of seconds greater than 0: fix "
            "or unset it"
        )
    return value


def version() -> str:
    """The version :func:`configure` settled on (this build's)."""
    return _cfg.version


def _own_version(name: str) -> str:
    from selfupdate._release import build_info

    info = build_info()
    if info is not None and info.version:
        return info.version
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        raise ValueError(
            f"selfupdate.app.configure({name!r}): no version given, this is no single-file "
            f"build and no distribution {name!r} is installed: pass version=..."
        ) from None


def _default_state_dir() -> Path:
    import platformdirs

    return platformdirs.user_state_path(_cfg.name)


def _default_client(repo_url: str | None, channel: str | None = None) -> ClientLike:
    """An UpdateClient for what the build embedded (trusted root, URL, channel)."""
    from selfupdate._clients import default_client

    return default_client(_cfg.name, repo_url, channel, _cfg.state_dir)


def migration(version: str) -> Callable[[Migration], Migration]:
    """Register ``fn(state_dir) -> str | None`` to run when an update crosses ``version``.

    A migration for version V runs when updating from a version below V to V or above, in
    version order. It may print or return a line describing what it changed. If it raises,
    the update fails and the state directory is restored from a copy kept outside it (the
    migration may change or remove anything in it, the directory itself included).

    Raises:
        ValueError: a migration for ``version`` is already registered.
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


def down_migration(version: str) -> Callable[[Migration], Migration]:
    """Register ``fn(state_dir) -> str | None`` to undo what the migration of ``version`` did,
    when ``update --to OLDER`` crosses ``version`` downward (``OLDER < version <= running``).

    It is run by the running, newer build (the only one that knows it), in the updater's
    process, newest version first, on the live state after its snapshot is taken and before
    the older build's trial; its output goes to the update's log. If it raises, the state is
    restored from the snapshot, nothing is installed and the older release is not blamed.
    Like a migration, it must leave ``.selfupdate`` in the state directory alone. Not run by
    ``rollback`` (that restores the state the previous build had).

    Raises:
        ValueError: a down-migration for ``version`` is already registered.
    """

    def deco(fn: Migration) -> Migration:
        if version in _cfg.down_migrations:
            raise ValueError(f"a down-migration for version {version} is already registered")
        _cfg.down_migrations[version] = fn
        return fn

    return deco


def installed_path() -> Path | None:
    """The real path of the running ``.pyz`` (symlinks resolved), or None when not in one."""
    from selfupdate import _shiv

    return _shiv.running_archive()


# --------------------------------------------------------------------------------------------
# Entry points run by the new build


def _state_dir() -> Path:
    if _cfg.state_dir is None:
        raise RuntimeError("selfupdate.app.configure() was not called")
    return _cfg.state_dir()


def _post_update(old: str, new: str) -> int:
    """``post-update OLD NEW``: migrations crossed, then the health check; status 0 = good,
    :data:`~selfupdate._names.TRIAL_REFUSED` = a migration or the health check failed (the one
    status that marks the release bad; anything else the trial dies of is retried later).

    Its output goes to the trial's log, which the user is pointed to when it fails.
    """
    state = _state_dir()
    print(f"post-update {old} -> {new} (this build: {_cfg.version}, state: {state})", flush=True)
    # An app that kept no state yet still gets a directory its migrations can write into
    # (its snapshot says "absent", so a failed trial or a rollback removes it again).
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    for v in migrations_between(old, new, list(_cfg.migrations)):
        fn = _cfg.migrations[v]
        try:
            what = fn(state)
        except Exception as e:
            import traceback

            traceback.print_exc(file=sys.stdout)
            print(f"FAILED: migration {v} ({fn.__name__}): {e}", flush=True)
            return TRIAL_REFUSED
        print(f"migration {v}: {what or fn.__name__}", flush=True)
    for check in _cfg.health_checks:
        try:
            check(state)
        except Exception as e:
            import traceback

            traceback.print_exc(file=sys.stdout)
            print(f"FAILED: health check {check.__name__}: {e}", flush=True)
            return TRIAL_REFUSED
    print("health check passed", flush=True)
    return 0


def _update_finish(old: str, new: str, log: str) -> int:
    """``update-finish OLD NEW LOG``: the new build, same PID, says what changed and tidies."""
    from selfupdate._clients import older
    from selfupdate._migrations import DOWN_PREFIX

    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            ran = [ln.rstrip() for ln in f if ln.startswith(("migration ", DOWN_PREFIX))]
    except OSError:
        ran = []
    if older(new, old):  # update --to an older version: only the newer build's down-migrations
        done = f"{old}'s down-migrations were run" if ran else "no migrations were run"
        print(f"{_cfg.name} downgraded {old} -> {new} in place (pid {os.getpid()}, same "
              f"process); {done}")
    else:
        print(f"{_cfg.name} updated {old} -> {new} in place (pid {os.getpid()}, same process)")
    for line in ran:
        print("  " + line)
    sys.stdout.flush()
    _clean_shiv()
    return 0


# --------------------------------------------------------------------------------------------
# Start hook


def at_start() -> None:
    """App-start hook (call in main after ``reexec_core.init()`` returned False).

    Marks this build's shiv extraction as in use, and finishes or undoes an update that a killed
    updater left half done; if that changed the installed file, starts it again (same PID, same
    arguments) so what runs is what is installed. Costs a few system calls otherwise.
    """
    if os.environ.get("REEXEC_CORE_ENTRY"):
        return  # a registered child (the trial, say): nothing to mark or recover, no imports
    from selfupdate import _shiv

    # A string, not a Path: importing pathlib (and what it pulls in) costs every start ~5 ms,
    # and only the rare recovery below needs it.
    pyz = _shiv.running_archive_path()
    if pyz is None:
        return
    try:
        held = _shiv.hold_extraction()
    except _shiv.UntrustedDirectoryError as e:
        # A build's own __main__ refuses such an extraction before anything runs from it
        # (selfupdate._shiv._boot); this start came some other way (an archive not made by
        # selfupdate build): too late to refuse, say so once per start, lock nothing there.
        _note(f"warning: {e}")
        held = True
    if not held:
        # A cleaner removed this extraction between shiv's check and our lock: start again,
        # and shiv extracts afresh.
        _reexec_self()
    journal = os.path.join(os.path.dirname(pyz), f".{os.path.basename(pyz)}.journal")
    if not os.path.lexists(journal):
        return
    from pathlib import Path

    from selfupdate.install import recover_at_start

    # Whatever keeps the bookkeeping from finishing (a full disk, a journal that is not ours,
    # a lock someone holds) is one line on stderr; the installed build runs as it is.
    if recover_at_start(Path(pyz), _state_dir() if _cfg.state_dir else None, say=_note):
        _reexec_self()


def _note(message: str) -> None:
    """One line for the user on stderr, in the app's name."""
    print(f"{_cfg.name or 'selfupdate'}: {message}", file=sys.stderr, flush=True)


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
    from selfupdate._shiv._clean import clean_shiv_dirs
    from selfupdate.install import Layout

    try:
        clean_shiv_dirs([pyz, Layout(pyz).previous], pyz.name)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# Update, rollback, auto-update


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _require_pyz() -> Path:
    pyz = installed_path()
    if pyz is None:
        from selfupdate.errors import InstallError

        raise InstallError(
            f"{_cfg.name or 'this program'} can update itself only when it runs as a single-file "
            "build (a shiv .pyz); this one runs from a source checkout"
        )
    return pyz


def update(
    repo_url: str | None = None,
    *,
    check_only: bool = False,
    handover: str = "finish",
    say: Callable[[str], None] | None = None,
    force: bool = False,
    to: str | None = None,
    channel: str | None = None,
) -> Outcome:
    """Update the running ``.pyz`` in place (:func:`selfupdate.install.update`), then continue
    in the new build.

    Args:
        repo_url: release repository, or several separated by spaces (mirrors, in order)
            (None: the one the app's client factory defaults to).
        check_only: only report.
        handover: after a committed update, ``"finish"`` (exec the new build as
            ``update-finish``: it prints what changed), ``"argv"`` (exec it with this process's
            original arguments) or ``"none"`` (return; the new build runs from the next start).
        say: progress messages.
        force, to, channel: as for :func:`selfupdate.install.update` (try a held or failed
            release again; install a chosen published version, also an older one, running
            only the down-migrations of this build it crosses; follow, and remember, another
            channel).

    Returns:
        The outcome (``.status``: ``"up-to-date"``, ``"available"`` with ``check_only``, or
        ``"updated"``; ``.old``, ``.new`` versions; ``.log_path``, the trial's log), when no
        handover happened (with a handover this does not return).

    Raises:
        selfupdate.errors.UpdateInterrupted: Ctrl-C (SIGINT) arrived: everything is left clean;
            its ``done`` says whether the new build was already installed (then it runs from
            the next start, and the message says so).
        selfupdate.errors.SelfUpdateError: every other failure, one sentence; the installed
            program and its state are as they were.
        RuntimeError: :func:`configure` was not called.
    """
    from selfupdate import install
    from selfupdate.errors import UpdateInterrupted

    pyz = _require_pyz()
    if _cfg.client is None:
        raise RuntimeError("selfupdate.app.configure() was not called")
    before = _inode(pyz)
    try:
        from selfupdate._clients import channel_name, client_for, older
        from selfupdate._migrations import down_hook

        client = client_for(_cfg.client, repo_url, channel_name(channel), pyz)
        downgrade = to is not None and older(to, _cfg.version)
        try:
            outcome = install.update(
                pyz, client, _cfg.version, _state_dir(), check_only=check_only,
                trial_timeout=_trial_timeout(), say=say, force=force, to=to, channel=channel,
                downgrade=downgrade, before_trial=down_hook(
                    _cfg.down_migrations, _cfg.version, to, _state_dir, say
                ) if downgrade else None,
            )
        except install.TrialFailedError:
            _clean_shiv()  # the refused build's extraction
            raise
        if outcome.status == "updated" and outcome.new is not None:
            if outcome.extra.get("unfinished"):
                _note(outcome.extra["unfinished"])  # installed; the next start finishes it
            if handover == "finish":
                import reexec_core

                # The new build says what changed and cleans shiv's directories (same PID).
                reexec_core.exec_into(
                    FINISH_ENTRY, outcome.old, outcome.new, str(outcome.log_path), program=pyz
                )
            elif handover == "argv":
                _clean_shiv()
                _reexec_self()
    except KeyboardInterrupt:
        # The transaction undid what it had begun, or (past the commit point) finished it;
        # a Ctrl-C after it returned, before the handover, finds the new build installed.
        # The switch is one rename, so a new inode means the new build is in place.
        if _inode(pyz) not in (before, None):
            raise UpdateInterrupted(
                f"interrupted, but the update of {_cfg.name} was already installed: the new "
                "build runs from the next start",
                done=True,
            ) from None
        raise UpdateInterrupted(
            f"interrupted; nothing was changed, {_cfg.name} {_cfg.version} stays", done=False
        ) from None
    return outcome


def rollback() -> str:
    """Put the previous build back (atomically, after its health check), its state restored.

    Returns:
        The version now installed.

    Raises:
        selfupdate.errors.SelfUpdateError: every failure, with a one-sentence message.
    """
    from selfupdate import install

    pyz = _require_pyz()
    version = install.rollback(
        pyz, _cfg.version, _state_dir(), trial_timeout=_trial_timeout(), say=_note
    )
    _clean_shiv()
    return version


def start_auto_update(
    interval: float,
    repo_url: str | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> threading.Thread:
    """Check for updates about every ``interval`` seconds in a daemon thread; on a committed
    update, exec the new build with this process's original arguments (same PID).

    Each wait is drawn anew, uniformly within 10 % of ``interval`` (``0.9 * interval`` to
    ``1.1 * interval``), so that a fleet started at the same moment does not check in
    lockstep; on average it checks every ``interval`` seconds.

    Failures are logged (each distinct message once) and the command keeps running.

    Args:
        interval: seconds between checks, a finite number > 0.
        repo_url: as for :func:`update`.
        log: where the messages go; default: stderr, as ``NAME: auto-update: ...``.

    Returns:
        The started thread.

    Raises:
        ValueError: ``interval`` is not a finite number > 0 (nothing is started).
    """
    import math
    import random
    import threading
    import time

    from selfupdate._jitter import next_wait
    from selfupdate.errors import SelfUpdateError

    if not isinstance(interval, int | float) or not math.isfinite(interval) or interval <= 0:
        raise ValueError(f"the auto-update interval must be a finite number > 0, got {interval!r}")
    jitter = random.Random()  # its own generator: an app seeding random must not sync a fleet

    def to_stderr(msg: str) -> None:
        print(f"{_cfg.name or 'selfupdate'}: {msg}", file=sys.stderr, flush=True)

    say = log or to_stderr
    seen: set[str] = set()

    def loop() -> None:
        while True:
            time.sleep(next_wait(interval, jitter))
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
