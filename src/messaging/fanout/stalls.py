"""Stalled partitions of the fanout consumer (ADR 0026; pure: no I/O, the clock is passed in).

A partition is *pending* while it has records this consumer has not finished: the log's end is
beyond its position (``EventSource.backlog``), or a batch holding its records is in hand (fetched,
not yet handed off and committed). Its *progress* is a batch of its records finished. The watch
keeps, per pending partition, since when it has been pending without progress; a partition
pending for longer than ``bound_seconds`` without progress is *stalled*. A partition with nothing
pending is never stalled: its clock starts when it becomes pending, and any progress restarts it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable


class StallWatch:
    def __init__(self, bound_seconds: float) -> None:
        if bound_seconds <= 0:
            raise ValueError("bound_seconds must be positive")
        self.bound_seconds = bound_seconds
        self._since: dict[int, float] = {}
        """Pending partitions: since when each has waited for progress."""

    def observe(self, pending: Collection[int], now: float) -> None:
        """The partitions pending now: the others are forgotten (nothing to wait for), new
        ones start waiting from ``now``."""
        for partition in [p for p in self._since if p not in pending]:
            del self._since[partition]
        for partition in pending:
            self._since.setdefault(partition, now)

    def progressed(self, partitions: Iterable[int], now: float) -> None:
        """Records of these partitions were finished: whatever is still pending there waits
        from ``now``."""
        for partition in partitions:
            if partition in self._since:
                self._since[partition] = now

    def stalled(self, now: float) -> dict[int, float]:
        """Each stalled partition with the seconds it has waited for progress."""
        return {
            partition: now - since
            for partition, since in sorted(self._since.items())
            if now - since > self.bound_seconds
        }

    def longest_wait(self, now: float) -> float:
        """The longest a pending partition has waited for progress (0 with none pending)."""
        return max((now - since for since in self._since.values()), default=0.0)
