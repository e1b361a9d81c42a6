"""Which migrations an update crosses, and the down-migrations of an explicit downgrade.

:func:`migrations_between` (an update: the new build's migrations, oldest first, in its trial)
and :func:`down_migrations_between` (``update --to OLDER``: the running, newer build's
down-migrations, newest first) are pure. :func:`run_down_migrations` runs the latter in the
updater's own process, on the live state after it was snapshotted and before the older build's
trial (:func:`selfupdate.install.update`'s ``before_trial``): the running build is the only one
that knows them. Kept apart from :mod:`selfupdate.app` (the app-facing surface), which
registers them; imports ``packaging`` only when called.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from packaging.version import Version

    Migration = Callable[[Path], str | None]

__all__ = ["down_hook", "down_migrations_between", "migrations_between", "run_down_migrations"]

#: How a down-migration's line starts in the update's log (what ``update-finish`` repeats).
DOWN_PREFIX = "down-migration "


def _public(old: str, new: str) -> tuple[Version, Version] | None:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(Version(old).public), Version(Version(new).public)
    except InvalidVersion:
        return None


def migrations_between(old: str, new: str, versions: list[str]) -> list[str]:
    """The registered versions an update from ``old`` to ``new`` crosses, in order (pure).

    ``old < v <= new`` in PEP 440 order, local labels ignored (``2.0.0+x`` crosses ``2.0.0``).
    A downgrade (rollback) crosses nothing: its state comes from a snapshot.
    """
    from packaging.version import Version

    bounds = _public(old, new)
    if bounds is None:
        return []
    lo, hi = bounds
    return sorted((v for v in versions if lo < Version(v) <= hi), key=Version)


def down_migrations_between(installed: str, target: str, versions: list[str]) -> list[str]:
    """The registered down-migrations a downgrade from ``installed`` to ``target`` crosses,
    newest first (pure): ``target < v <= installed``, local labels ignored. The down-migration
    of ``v`` undoes what the migration of ``v`` did; an update crosses none."""
    from packaging.version import Version

    bounds = _public(target, installed)
    if bounds is None:
        return []
    lo, hi = bounds
    crossed = [v for v in versions if lo < Version(v) <= hi]
    return sorted(crossed, key=Version, reverse=True)


def down_hook(
    fns: Mapping[str, Migration],
    installed: str,
    to: str | None,
    state: Callable[[], Path],
    say: Callable[[str], None] | None,
) -> Callable[[Path], list[str]] | None:
    """:func:`selfupdate.install.update`'s ``before_trial`` for ``update --to OLDER``: the
    down-migrations ``fns`` of the running build (``installed``) that the downgrade crosses,
    or None when there are none (then no migration runs at all)."""
    if to is None:
        return None
    crossed = down_migrations_between(installed, to, list(fns))
    if not crossed:
        return None
    return lambda log: run_down_migrations(
        fns, crossed, installed, to, state(), log, say or (lambda _msg: None)
    )


def run_down_migrations(
    fns: Mapping[str, Migration],
    versions: list[str],
    installed: str,
    target: str,
    state: Path,
    log: Path,
    say: Callable[[str], None],
) -> list[str]:
    """Run the down-migrations ``versions`` (newest first) on ``state``; return their lines
    (``down-migration V: WHAT``) for the trial's log.

    Their output (print, a traceback) goes to ``log`` (created afresh, 0600), which stays
    when one fails; ``say`` gets one line per down-migration that passed.

    Raises:
        DownMigrationError: one raised, its message a clause saying which and why (the
            caller's transaction restores the state and completes the sentence).
        InstallError: the log cannot be written.
    """
    import contextlib
    import io
    import traceback

    from selfupdate.errors import DownMigrationError, InstallError
    from selfupdate.install._trial import open_log

    try:
        raw = open_log(log)
    except OSError as e:
        raise InstallError(
            f"cannot downgrade: writing the update's log {log} failed ({e.strerror or e}); "
            "nothing was changed"
        ) from e
    lines: list[str] = []
    with io.TextIOWrapper(raw, encoding="utf-8", errors="replace", line_buffering=True) as out:
        out.write(f"# down-migrations {installed} -> {target}, run by {installed} "
                  f"(state: {state})\n")
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        for v in versions:
            fn = fns[v]
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                    what = fn(state)
            except Exception as e:
                traceback.print_exc(file=out)
                out.write(f"FAILED: {DOWN_PREFIX}{v} ({fn.__name__}): {e}\n")
                out.flush()
                # A clause: the update's flow ends the sentence once it has put the state
                # back, and says whether it could.
                raise DownMigrationError(
                    f"the down-migration {v} ({fn.__name__}) of {installed} failed "
                    f"({type(e).__name__}: {' '.join(str(e).split())})",
                    v, log,
                ) from e
            line = f"{DOWN_PREFIX}{v}: {what or fn.__name__}"
            out.write(line + "\n")
            lines.append(line)
            say(line)
    sys.stdout.flush()
    return lines
