"""The command line's side of phased rollouts: argument types and the lines it prints
(``selfupdate publish --rollout``, ``selfupdate rollout``, ``status``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selfupdate.releases.publish import Status

__all__ = ["duration", "percent", "phase", "rollout_json", "rollout_line", "schedule"]


def percent(text: str) -> int:
    """argparse type: a whole percentage 1-100."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"expected a whole percentage 1-100, got {text!r}")
    return int(text)


def duration(text: str) -> int:
    """argparse type: ``30m``, ``12h``, ``2d`` as seconds."""
    from selfupdate.releases._rollout import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def schedule(ns: argparse.Namespace) -> tuple[int, int] | None:
    """``publish``'s ``(step, every)``, or None without a schedule."""
    if ns.rollout_step is None and ns.rollout_every is None:
        return None
    return ns.rollout_step or 0, ns.rollout_every or 0


def rollout_line(change: Any) -> str:
    """What ``selfupdate rollout`` did to one release (a ``RolloutChange``), one line."""
    from datetime import UTC, datetime

    r, ro = change.release, change.rollout
    what = f"{r.app} {r.version} on channel {r.channel}"
    if ro is None:
        return f"{what} is offered to every machine"
    now = datetime.now(UTC)
    state = f"paused at {ro.share(now)}%" if ro.paused else f"rolling out at {ro.describe(now)}"
    return f"{what} is {state}"


def rollout_json(st: Status, rel: Any) -> dict[str, Any] | None:
    """``status --json``'s ``rollout`` of a release: its share now and schedule, or None."""
    from datetime import UTC, datetime

    ro = st.rollouts.get(rel.target_path)
    if ro is None:
        return None
    since = ro.since.strftime("%Y-%m-%dT%H:%M:%SZ") if ro.since else None
    return {"percent": ro.share(datetime.now(UTC)), "paused": ro.paused, "step": ro.step,
            "every": ro.every, "since": since}  # fmt: skip


def phase(st: Status, rel: Any) -> str:
    """`` [rolling out 25%]`` / `` [paused at 25%]`` after a release in a rollout, else ""."""
    from datetime import UTC, datetime

    ro = st.rollouts.get(rel.target_path)
    if ro is None:
        return ""
    now = datetime.now(UTC)
    return f" [paused at {ro.share(now)}%]" if ro.paused else f" [rolling out {ro.describe(now)}]"
