"""Phased rollout: which machines a release is offered to yet (pure: no I/O but the clock
value handed in).

The publisher signs a release's rollout into its target's ``custom.selfupdate`` fields (so it
is as trustworthy as the release itself, and changes only by re-signing targets)::

    "rollout": {"percent": 25, "paused": false, "since": "2026-05-01T12:00:00Z",
                "step": 0, "every": 0}
    "critical": true          (instead: every machine at once, no phases)

Each client places itself: a release of ``app`` at ``version`` is offered to a machine when
``sha256(install_id NUL app NUL version)``, read as a number in [0, 100), lies below the share
the rollout is at. The salt (app and version) makes each release pick its own first machines,
so it is never the same few that go first (nextcloud's updater grouped by install time, and
the same 3% always went first); raising the share keeps every machine that was in (a larger
threshold on the same number); pausing offers the release to no machine that has not
installed it (those on it stay: a client is only ever offered versions newer than its own).

A schedule grows the share by ``step`` points every ``every`` seconds after ``since`` (as
Sparkle's phased groups). Only the client's clock can tell how far it has grown: a machine
whose clock runs ahead places itself as a later moment would, one that runs behind waits
longer. That is the same clock TUF's expiry checks trust, and a wrong clock only moves *when*
a machine is offered a release, never *what* it installs (every byte is still verified).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from selfupdate.releases._trust import CUSTOM_KEY, parse_version, release_from_target

__all__ = [
    "INSTALL_ID_ENV",
    "Rollout",
    "Waiting",
    "check_install_id",
    "held_back",
    "in_rollout",
    "newest_waiting",
    "parse_duration",
    "placement",
    "rollout_fields",
    "rollout_of",
]

INSTALL_ID_ENV = "SELFUPDATE_INSTALL_ID"  # overrides the machine's own (fleet tools, tests)
ROLLOUT_KEY = "rollout"  # inside custom.selfupdate
CRITICAL_KEY = "critical"
_INSTALL_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
_TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Rollout:
    """A release's signed rollout.

    Attributes:
        percent: the share of machines (1-100) offered the release at ``since``.
        paused: offered to no machine that has not installed it.
        since: when ``percent`` was set (UTC), the start of the schedule.
        step: percentage points added every ``every`` seconds (0: no schedule).
        every: seconds between steps (0 with ``step`` 0).
    """

    percent: int
    paused: bool = False
    since: datetime | None = None
    step: int = 0
    every: int = 0

    def share(self, now: datetime) -> int:
        """The share (0-100) of machines offered the release at ``now``, by the schedule;
        a clock before ``since`` counts as ``since`` (never less than ``percent``)."""
        if self.step <= 0 or self.every <= 0 or self.since is None:
            return min(self.percent, 100)
        steps = max(int((now - self.since).total_seconds() // self.every), 0)
        return min(self.percent + steps * self.step, 100)

    def describe(self, now: datetime) -> str:
        """``25%``, or ``25%, +10% every 1d`` with a schedule."""
        text = f"{self.share(now)}%"
        if self.step and self.share(now) < 100:
            text += f", +{self.step}% every {_duration_text(self.every)}"
        return text


@dataclass(frozen=True)
class Waiting:
    """A newer release this machine is not offered yet (what ``update --check`` says)."""

    version: str
    percent: int  # the share it is at now
    paused: bool


def check_install_id(value: str) -> str:
    """``value`` if it can be an install ID (8-128 of ``A-Za-z0-9._:-``).

    Raises:
        ValueError: it cannot.
    """
    if not isinstance(value, str) or not _INSTALL_ID.match(value):
        raise ValueError(
            f"the install ID {value!r} is not 8-128 letters, digits, '.', '_', ':' or '-'"
        )
    return value


def placement(install_id: str, app: str, version: str) -> float:
    """Where this machine stands for this release, in [0, 100): salted by app and version
    (PEP 440 normalised: ``2.1`` and ``2.1.0`` are one release)."""
    return _number(install_id, app, version) * 100 / 2**64


def in_rollout(install_id: str, app: str, version: str, percent: int) -> bool:
    """The machine is among the first ``percent`` % for this release (exact integer test:
    a machine in at ``percent`` is in at every larger one)."""
    return _number(install_id, app, version) * 100 < percent * 2**64


def _number(install_id: str, app: str, version: str) -> int:
    v = parse_version(version)
    release = list(v.release)
    while len(release) > 1 and release[-1] == 0:  # 2.1.0 and 2.1 compare equal: one salt
        release.pop()
    canonical = str(v).replace(".".join(map(str, v.release)), ".".join(map(str, release)), 1)
    salt = f"{install_id}\0{app}\0{canonical}".encode()
    return int.from_bytes(hashlib.sha256(salt).digest()[:8], "big")


def rollout_fields(
    *,
    percent: int | None = None,
    paused: bool = False,
    step: int = 0,
    every: int = 0,
    critical: bool = False,
    now: datetime,
) -> dict[str, Any]:
    """The fields the publisher adds to ``custom.selfupdate`` (inverse of :func:`rollout_of`);
    empty for a release offered to every machine at once.

    Raises:
        ValueError: a share outside 1-100, a step without an interval (or the reverse), a
            critical release with phases.
    """
    if critical:
        if percent is not None or step or paused:
            raise ValueError(
                "a critical release goes to every machine at once, in no phases: drop "
                "--rollout (or --critical)"
            )
        return {CRITICAL_KEY: True}
    if percent is None:
        if step or every:
            raise ValueError("a rollout schedule needs a start share: add --rollout PERCENT")
        return {}
    _check_percent(percent)
    if (step > 0) != (every > 0) or step < 0 or every < 0:
        raise ValueError(
            "a rollout schedule needs both a step and an interval: pass --rollout-step (1-100) "
            "and --rollout-every"
        )
    if step > 100:
        raise ValueError(f"the rollout step {step} is over 100 points: pass one of 1-100")
    if percent == 100 and not paused:
        return {}  # every machine: no rollout left to sign
    return {
        ROLLOUT_KEY: {
            "percent": percent, "paused": bool(paused), "since": now.strftime(_TIME),
            "step": step, "every": every,
        }
    }  # fmt: skip


def _check_percent(percent: int) -> None:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100:
        raise ValueError(
            f"the rollout share {percent!r} is not a whole percentage 1-100: pass one (to "
            "offer it to no machine yet, pause the rollout)"
        )


def rollout_of(custom: Any) -> tuple[Rollout | None, bool]:
    """A target's signed rollout and whether it is critical: ``(None, False)`` for a release
    offered to every machine.

    Raises:
        ValueError: the rollout fields are malformed (the caller holds the release back: a
            broken rollout must not reach every machine at once).
    """
    fields = custom.get(CUSTOM_KEY) if isinstance(custom, Mapping) else None
    if not isinstance(fields, Mapping):
        return None, False
    critical = fields.get(CRITICAL_KEY) is True
    raw = fields.get(ROLLOUT_KEY)
    if raw is None:
        return None, critical
    try:
        percent, paused = raw["percent"], raw["paused"]
        step, every, since = raw.get("step", 0), raw.get("every", 0), raw.get("since")
        _check_percent(percent)
        if not isinstance(paused, bool):
            raise ValueError("paused is not true or false")
        for name, v in (("step", step), ("every", every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} is not a whole number >= 0")
        when = None
        if since is not None:
            when = datetime.strptime(since, _TIME).replace(tzinfo=UTC)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"the rollout fields are malformed ({e})") from None
    if critical:  # no phases; only a pause holds it back
        return (Rollout(100, True, when) if paused else None), True
    return Rollout(percent, paused, when, step, every), False


def held_back(
    targets: Mapping[str, Any],
    app: str,
    channel: str,
    install_id: Callable[[], str],
    now: datetime,
    skipped: list[str] | None = None,
) -> dict[str, Waiting]:
    """The releases of ``app`` on ``channel`` not offered to this machine yet: target path ->
    :class:`Waiting`. ``install_id`` is called only when a share between 0 and 100 needs it
    (so a repository without rollouts never makes a machine keep an ID).

    Args:
        targets: verified targets (path -> ``TargetFile``-like), as for ``releases``.
        skipped: receives one line per release held back for malformed rollout fields.
    """
    out: dict[str, Waiting] = {}
    for path, tf in targets.items():
        try:
            rel = release_from_target(path, tf.length, tf.hashes, tf.custom)
        except ValueError:
            continue  # releases() reports it
        if rel is None or rel.app != app or rel.channel != channel:
            continue
        try:
            rollout, _critical = rollout_of(tf.custom)
        except ValueError as e:
            if skipped is not None:
                skipped.append(f"target {path}: {e}")
            out[path] = Waiting(rel.version, 0, True)
            continue
        if rollout is None:
            continue
        share = rollout.share(now)
        if rollout.paused:
            out[path] = Waiting(rel.version, share, True)
        elif share < 100 and not in_rollout(install_id(), app, rel.version, share):
            out[path] = Waiting(rel.version, share, False)
    return out


def newest_waiting(waiting: Mapping[str, Waiting], above: str | None) -> Waiting | None:
    """The newest of ``waiting`` newer than ``above`` (a version, or None: any)."""
    floor = parse_version(above) if above is not None else None
    best: Waiting | None = None
    for w in waiting.values():
        v = parse_version(w.version)
        if (floor is None or v > floor) and (best is None or v > parse_version(best.version)):
            best = w
    return best


def parse_duration(text: str) -> int:
    """Seconds in ``90``, ``90s``, ``30m``, ``12h`` or ``2d`` (at least 60 s: a client checks
    rarely more often than that).

    Raises:
        ValueError: anything else.
    """
    m = re.fullmatch(r"\s*([0-9]{1,9})\s*([smhd]?)\s*", text or "")
    if not m:
        raise ValueError(f"expected a duration like 30m, 12h or 2d, got {text!r}")
    seconds = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if seconds < 60:
        raise ValueError(f"a rollout step interval must be at least 1 minute, got {text!r}")
    return seconds


def _duration_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"

