"""Latency histograms: HDR (PyPI ``hdrhistogram``), microseconds, 3 significant digits."""

from __future__ import annotations

from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 600_000_000  # 10 minutes: anything slower is clamped (and reported as the max)
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 95.0, 99.0, 99.9)


class Latency:
    """Latency samples in seconds, stored in an HDR histogram of microseconds."""

    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    def record(self, seconds: float) -> None:
        micros = int(seconds * 1_000_000)
        self._h.record_value(min(max(micros, LOWEST_US), HIGHEST_US))

    def merge(self, other: Latency) -> None:
        self._h.add(other._h)

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def percentile_ms(self, percentile: float) -> float:
        if not self.count:
            return 0.0
        return float(self._h.get_value_at_percentile(percentile)) / 1000.0

    def max_ms(self) -> float:
        return float(self._h.get_max_value()) / 1000.0 if self.count else 0.0

    def summary(self) -> dict[str, Any]:
        """``count``, ``p50``/``p95``/``p99``/``p99.9``/``max``/``mean`` in milliseconds."""
        out: dict[str, Any] = {"count": self.count}
        for p in PERCENTILES:
            out[f"p{p:g}"] = round(self.percentile_ms(p), 3)
        out["max"] = round(self.max_ms(), 3)
        out["mean"] = round(float(self._h.get_mean_value()) / 1000.0, 3) if self.count else 0.0
        return out
