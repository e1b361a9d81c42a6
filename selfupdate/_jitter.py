"""The wait between two periodic update checks: one rule for every caller (a stdlib leaf).

A fleet started at the same moment (a deploy, a reboot of the rack) must not check in
lockstep: each wait is drawn anew, uniformly between ``(1 - SPREAD) * interval`` and
``(1 + SPREAD) * interval``, so on average a check comes every ``interval`` seconds.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random

#: How far one wait may be from the interval, as a fraction of it (10 %).
SPREAD = 0.1


def next_wait(interval: float, rng: random.Random) -> float:
    """Seconds until the next check: uniform in ``interval * [1 - SPREAD, 1 + SPREAD]``.

    ``rng`` is the caller's own generator, so an app that seeds :mod:`random` cannot make
    its fleet wait in step.
    """
    return interval * rng.uniform(1 - SPREAD, 1 + SPREAD)
