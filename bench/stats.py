"""Latency histograms: cheap to record, mergeable across processes, percentiles out.

Buckets are log-spaced (about 2.3 % wide) from 1 us to ~100 s, so recording is
one ``log`` and one list increment, and a histogram pickles as a short list.
"""

from __future__ import annotations

import math

_PER_E = 44  # buckets per factor e: bucket width ~2.3 %
_BUCKETS = int(math.log(100e6) * _PER_E) + 2  # up to 100 s, in microseconds


class Histogram:
    """Counts of latencies in seconds; ``record``, ``merge``, ``percentile``."""

    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * _BUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def record(self, seconds: float, n: int = 1) -> None:
        us = seconds * 1e6
        index = int(math.log(us) * _PER_E) + 1 if us >= 1.0 else 0
        if index >= _BUCKETS:
            index = _BUCKETS - 1
        self.counts[index] += n
        self.count += n
        self.total += seconds * n
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: Histogram) -> None:
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, p: float) -> float | None:
        """Upper edge of the bucket holding the ``p``-th percentile, in seconds (None if empty)."""
        if not self.count:
            return None
        rank = math.ceil(self.count * p / 100.0)
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(self.max, math.exp(i / _PER_E) / 1e6)
        return self.max

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def to_dict(self) -> dict[str, float | int | None]:
        """Summary in milliseconds for the JSON results."""

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        return {
            "count": self.count,
            "p50_ms": ms(self.percentile(50)),
            "p90_ms": ms(self.percentile(90)),
            "p99_ms": ms(self.percentile(99)),
            "p999_ms": ms(self.percentile(99.9)),
            "max_ms": ms(self.max if self.count else None),
            "mean_ms": ms(self.mean()),
        }

    def __getstate__(self) -> tuple[list[int], int, float, float]:
        return (self.counts, self.count, self.total, self.max)

    def __setstate__(self, state: tuple[list[int], int, float, float]) -> None:
        self.counts, self.count, self.total, self.max = state
