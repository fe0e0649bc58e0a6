"""A log-bucket latency histogram in the manner of HdrHistogram.

Values are non-negative integers (nanoseconds here). Values below 256 have a
bucket each; above, every power of two is split into 128 buckets, so a
reported percentile is within 1/128 (< 0.8 %) of the true value. Histograms
from several processes merge by adding counts.
"""

from __future__ import annotations

import math
from typing import Any

#: Buckets per power of two; 2**SUB_BITS.
SUB_BITS = 7
SUB_COUNT = 1 << SUB_BITS
#: Enough buckets for any 63-bit value.
BUCKETS = (64 - SUB_BITS) * SUB_COUNT + 2 * SUB_COUNT


def bucket_of(value: int) -> int:
    """The bucket index of a value: exact below 256, then 128 per power of two."""
    shift = value.bit_length() - (SUB_BITS + 1)
    if shift <= 0:
        return value
    return (shift << SUB_BITS) + (value >> shift)


def bucket_high(index: int) -> int:
    """The largest value that falls into bucket `index`."""
    if index < 2 * SUB_COUNT:
        return index
    shift = (index >> SUB_BITS) - 1
    mantissa = index - (shift << SUB_BITS)
    return ((mantissa + 1) << shift) - 1


class LogHistogram:
    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def record(self, value: int) -> None:
        if value < 0:
            value = 0  # clocks are monotonic; guard anyway
        self.counts[bucket_of(value)] += 1
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += 1
        self.total += value

    def merge(self, other: LogHistogram) -> None:
        if other.count == 0:
            return
        counts = self.counts
        for index, n in enumerate(other.counts):
            if n:
                counts[index] += n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    def percentile(self, p: float) -> int:
        """The value at or below which `p` percent of the values lie (bucket upper bound)."""
        if self.count == 0:
            return 0
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(bucket_high(index), self.max)
        return self.max

    # --- transport between processes and into JSON ------------------------

    def to_dict(self) -> dict[str, Any]:
        buckets = {i: n for i, n in enumerate(self.counts) if n}
        return {
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
            "buckets": buckets,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogHistogram:
        hist = cls()
        for index, n in data["buckets"].items():
            hist.counts[int(index)] = n
        hist.count, hist.total = data["count"], data["total"]
        hist.min, hist.max = data["min"], data["max"]
        return hist

    def summary_us(self) -> dict[str, float]:
        """Percentiles in microseconds, for reports."""

        def us(ns: float) -> float:
            return round(ns / 1000, 1)

        return {
            "count": self.count,
            "min_us": us(self.min),
            "mean_us": us(self.total / self.count) if self.count else 0.0,
            "p50_us": us(self.percentile(50)),
            "p90_us": us(self.percentile(90)),
            "p99_us": us(self.percentile(99)),
            "p999_us": us(self.percentile(99.9)),
            "max_us": us(self.max),
        }
