"""Which release ``update`` takes, and why none: pure decisions over verified targets.

:func:`choose` is what :meth:`selfupdate.releases.client.UpdateClient.check` and ``find`` do
with the verified ``targets`` metadata: the newest newer release (or the version asked for),
what the publisher said about the installed version if it withdrew it, and a one-sentence
:class:`~selfupdate.errors.ReleaseNotFoundError` when the channel holds nothing for this app
(a mistyped channel or app name would otherwise look "up to date" forever) or the version asked
for is not published.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from selfupdate import errors
from selfupdate.releases._trust import (
    Release,
    Withdrawn,
    newest_release,
    parse_version,
    releases,
    withdrawn,
)

__all__ = ["choose"]


def choose(
    targets: Mapping[str, Any],
    app: str,
    channel: str,
    current_version: str | None,
    to: str | None = None,
    skipped: list[str] | None = None,
    held: Collection[str] = (),
) -> tuple[Release | None, Withdrawn | None]:
    """The release to install and the withdrawal of the installed version (pure).

    Args:
        targets: verified targets (path -> ``TargetFile``-like), as for :func:`releases`.
        app, channel: what the client follows.
        current_version: the installed version (None: unknown).
        to: the version asked for (``update --to``), or None for the newest newer one.
        skipped: receives one line per malformed release entry.
        held: target paths not offered to this machine yet (a phased rollout,
            :mod:`selfupdate.releases._rollout`); ``to`` ignores them (a version asked for
            by name is installed).

    Returns:
        ``(release, withdrawn)``: the release (None: up to date; never None with ``to``),
        and the :class:`Withdrawn` record of ``current_version`` on this channel, or None.

    Raises:
        selfupdate.errors.ReleaseNotFoundError: the repository has releases, but none of
            ``app`` on ``channel``; or ``to`` is not published there.
        ValueError: ``current_version`` is not a PEP 440 version.
    """
    found = releases(targets, skipped)
    gone = withdrawn(targets)
    mine = [r for r in found if r.app == app and r.channel == channel]
    yanked = None
    if current_version is not None:
        cur = parse_version(current_version)
        yanked = next(
            (w for w in gone if w.app == app and w.channel == channel
             and parse_version(w.version) == cur),
            None,
        )
    if not mine and (found or gone) and (to is not None or not _any_of(gone, app, channel)):
        raise _no_channel(found, gone, app, channel, to)
    if to is None:
        offered = [r for r in mine if r.target_path not in held]
        return newest_release(offered, app, channel, current_version), yanked
    try:
        want = parse_version(to)
    except ValueError:
        want = None
    for rel in mine:
        if want is not None and parse_version(rel.version) == want:
            return rel, yanked
    listed = ", ".join(r.version for r in mine) or "none"
    raise errors.ReleaseNotFoundError(
        f"{app} {to} is not published on channel {channel!r} (published there: {listed}): "
        "pass one of those to --to",
        app, channel, to, [r.version for r in mine],
    )


def _any_of(items: list[Withdrawn], app: str, channel: str) -> bool:
    return any(w.app == app and w.channel == channel for w in items)


def _no_channel(
    found: list[Release], gone: list[Withdrawn], app: str, channel: str, to: str | None
) -> errors.ReleaseNotFoundError:
    channels = sorted({r.channel for r in found if r.app == app})
    if channels:
        where = f"channels with releases of {app}: {', '.join(channels)}"
        todo = "pass one of those to --channel"
    else:
        apps = sorted({r.app for r in found} | {w.app for w in gone})
        where = f"it holds releases of {', '.join(apps)} only"
        todo = "check the repository URL and the app name it was published under"
    return errors.ReleaseNotFoundError(
        f"the release repository has no release of {app} on channel {channel!r} ({where}): "
        f"{todo}",
        app, channel, to, channels,
    )
