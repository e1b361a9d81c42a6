"""``selfupdate rollout``: change a published release's rollout by re-signing its target.

Only the release's ``custom.selfupdate`` rollout fields change (:mod:`selfupdate.releases.
_rollout`), then targets, snapshot and timestamp are re-signed bottom-up like every publisher
write (:class:`selfupdate.releases._repo.Chain`). Clients see the change at their next
timestamp refresh: a pause stops new installs from then on, a larger share offers it to more
machines (every machine already in stays in).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from selfupdate import errors
from selfupdate.releases._archive import RefusedError
from selfupdate.releases._maintain import editing
from selfupdate.releases._rollout import (
    CRITICAL_KEY,
    ROLLOUT_KEY,
    Rollout,
    rollout_fields,
    rollout_of,
)
from selfupdate.releases._trust import CUSTOM_KEY, Release, parse_version, releases

__all__ = ["RolloutChange", "set_rollout"]


@dataclass(frozen=True)
class RolloutChange:
    """What :func:`set_rollout` did to one release: its rollout after the change (None:
    offered to every machine), and a warning for the publisher, if any."""

    release: Release
    rollout: Rollout | None
    critical: bool
    warning: str | None = None


def set_rollout(
    keys_dir: Path,
    repo_dir: Path,
    app: str,
    version: str,
    *,
    percent: int | None = None,
    pause: bool = False,
    resume: bool = False,
    step: int | None = None,
    every: int | None = None,
    channel: str | None = None,
    expiry_days: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> list[RolloutChange]:
    """Set the share (``percent``, and optionally a new schedule ``step``/``every``), pause or
    resume the rollout of release ``version`` of ``app`` (on ``channel``, or on every channel
    that has it), and re-sign. A share of 100 that is not paused drops the rollout: the
    release is then offered to every machine.

    A pause freezes a schedule where it stands; a resume continues it from there.

    Raises:
        RefusedError: no such release (nothing written), or phases asked of a critical one.
        selfupdate.errors.PublishError: a bad name, version, share or schedule.
    """
    if sum((percent is not None, pause, resume)) != 1:
        raise errors.PublishError("pass exactly one of --percent P, --pause or --resume")
    with editing(keys_dir, repo_dir, app, version, channel, expiry_days, now) as (chain, wanted):
        targets = chain.targets.signed.targets
        hits = [
            r for r in releases(targets)
            if r.app == app and parse_version(r.version) == wanted
            and (channel is None or r.channel == channel)
        ]  # fmt: skip
        if not hits:
            on = f" on channel {channel!r}" if channel else ""
            raise RefusedError(
                f"{app} {version} is not an offered release{on} in {repo_dir} (a withdrawn one "
                "cannot be rolled out): see `selfupdate status` for what is published"
            )
        changes = []
        for rel in hits:
            tf = targets[rel.target_path]
            custom = dict(tf.custom or {})
            fields = dict(custom[CUSTOM_KEY])
            try:
                old, critical = rollout_of(custom)
                new = _changed(old, critical, percent, pause, resume, step, every, chain.now)
            except ValueError as e:
                raise errors.PublishError(f"{app} {rel.version} on {rel.channel}: {e}") from None
            fields.pop(ROLLOUT_KEY, None)
            fields.update(new)
            custom[CUSTOM_KEY] = fields
            tf.unrecognized_fields["custom"] = custom
            after, _ = rollout_of(custom)
            warning = None
            if old is not None and percent is not None and percent < old.share(chain.now):
                warning = (
                    f"{rel.app} {rel.version} was at {old.share(chain.now)}%: the machines "
                    f"that installed it keep it, the others between {percent}% and "
                    f"{old.share(chain.now)}% are not offered it any more"
                )
            changes.append(RolloutChange(rel, after, critical, warning))
        chain.check_keys()
        chain.from_targets()
        return changes


def _changed(
    old: Rollout | None,
    critical: bool,
    percent: int | None,
    pause: bool,
    resume: bool,
    step: int | None,
    every: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The new rollout fields of one release (pure)."""
    share = old.share(now) if old is not None else 100
    keep_step = old.step if old is not None and step is None else (step or 0)
    keep_every = old.every if old is not None and every is None else (every or 0)
    if critical:
        if percent is not None or step or every:
            raise ValueError("it is critical (published to every machine at once): no phases")
        out: dict[str, Any] = {CRITICAL_KEY: True}
        if pause:
            out |= rollout_fields(percent=100, paused=True, now=now)
        return out
    if percent is not None:
        # A pause stays a pause: only --resume lifts it.
        return rollout_fields(
            percent=percent, paused=old.paused if old is not None else False,
            step=keep_step, every=keep_every, now=now,
        )  # fmt: skip
    # Pause and resume freeze or continue the schedule from the share it reached.
    return rollout_fields(percent=share, paused=pause, step=keep_step, every=keep_every, now=now)
