"""Rate limits as token buckets: pure arithmetic over an injected clock, no I/O.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; each request
takes one. :class:`KeyedBuckets` keeps one bucket per key (a user, a client address) in a
bounded map: a key whose bucket has refilled completely carries no state worth keeping, so
the least recently used entries are dropped first when the map is full (a dropped bucket had
usually refilled, so dropping it changes nothing a client can observe).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import attrs


@attrs.frozen
class Rate:
    """``per_second`` sustained, with bursts of up to ``burst`` requests."""

    per_second: float
    burst: int

    def __attrs_post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError(f"a rate needs per_second > 0 and burst >= 1, got {self}")


class TokenBucket:
    def __init__(self, rate: Rate, now: float) -> None:
        self._rate = rate
        self._tokens = float(rate.burst)
        self._updated = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self._rate.burst), self._tokens + elapsed * self._rate.per_second)
        self._updated = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate.per_second


class KeyedBuckets:
    """One bucket per key, at most ``max_keys`` of them (least recently used dropped first)."""

    def __init__(self, rate: Rate, clock: Callable[[], float], max_keys: int = 100_000) -> None:
        self._rate = rate
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def rate(self) -> Rate:
        return self._rate

    def take(self, key: str) -> float:
        """0.0 if ``key`` may go ahead now, else the seconds to wait."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self._rate, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                # Least recently used first. A dropped bucket that was still refilling gives
                # its key a fresh burst: the price of bounded memory under a flood of keys.
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_seconds(wait: float) -> int:
    """A wait as the whole seconds of an HTTP ``Retry-After`` (at least 1)."""
    return max(1, math.ceil(wait))


class Counter:
    """Open things per key (connections per user or per address), bounded by ``limit``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._counts: dict[str, int] = {}

    @property
    def limit(self) -> int:
        return self._limit

    def acquire(self, key: str) -> bool:
        count = self._counts.get(key, 0)
        if count >= self._limit:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    def count(self, key: str) -> int:
        return self._counts.get(key, 0)
