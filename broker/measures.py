"""Histograms the broker's loop keeps for its metrics: fixed buckets, plain counts.

An observation is a bisect and two list updates, cheap enough for the loop
(it observes once per commit and once per flush, not per message). The
metrics endpoint (metrics.py) copies `counts` from its own thread: one list
copy, atomic under the GIL, so buckets and count always agree.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

#: Seconds, from 50 µs to 1 s: a commit or a wake-up's work takes from tens of µs to, badly, a second.
SECONDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Histogram:
    """Counts of observations per bucket (upper bounds, inclusive), and their sum."""

    __slots__ = ("bounds", "counts")

    def __init__(self, bounds: Sequence[float] = SECONDS) -> None:
        self.bounds = tuple(bounds)
        #: One count per bound, one for +Inf, then the sum of all values observed.
        self.counts: list[float] = [0] * (len(self.bounds) + 1) + [0.0]

    def observe(self, value: float, weight: int = 1) -> None:
        """`weight` observations of `value` (a batch of messages that waited as long)."""
        counts = self.counts
        counts[bisect_left(self.bounds, value)] += weight
        counts[-1] += value * weight

    def cumulative(self) -> tuple[list[tuple[float, int]], float]:
        """(upper bound, observations at most that) for each bound and +Inf, and the sum: one copy."""
        counts = self.counts[:]  # atomic: read from another thread while the loop observes
        running, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), counts[:-1], strict=True):
            running += int(count)
            buckets.append((bound, running))
        return buckets, float(counts[-1])
