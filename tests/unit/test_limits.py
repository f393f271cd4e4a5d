"""Token buckets and connection counters (domain/limits.py), on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messaging.domain.limits import Counter, KeyedBuckets, Rate, TokenBucket, retry_after_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    bucket = TokenBucket(Rate(2.0, 3), now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0  # refilled one token in 0.5 s at 2/s


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(Rate(1.0, 2), now=0.0)
    allowed = [bucket.take(1000.0) == 0.0 for _ in range(5)]
    assert allowed == [True, True, False, False, False]


@given(
    rate=st.floats(0.1, 100.0),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
)
def test_allowed_requests_never_exceed_burst_plus_rate_times_time(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(Rate(rate, burst), now=0.0)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        assert wait >= 0.0
        if wait == 0.0:
            allowed += 1
        else:  # waiting as told is enough
            assert bucket.take(now + wait + 1e-9) == 0.0
            bucket = TokenBucket(Rate(rate, burst), now=0.0)
            now, allowed = 0.0, 0
    assert allowed <= burst + rate * now + 1e-6


def test_keyed_buckets_are_independent_and_bounded() -> None:
    clock = Clock()
    buckets = KeyedBuckets(Rate(1.0, 1), clock, max_keys=3)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0.0
    assert buckets.take("b") == 0.0
    for key in "cdef":
        buckets.take(key)
    assert len(buckets) == 3
    clock.now = 1.0
    assert buckets.take("a") == 0.0


def test_a_wait_becomes_whole_retry_after_seconds() -> None:
    assert retry_after_seconds(0.01) == 1
    assert retry_after_seconds(1.2) == 2


def test_a_counter_bounds_open_things_per_key_and_frees_on_release() -> None:
    counter = Counter(2)
    assert counter.acquire("u")
    assert counter.acquire("u")
    assert not counter.acquire("u")
    assert counter.acquire("v")
    counter.release("u")
    assert counter.count("u") == 1
    assert counter.acquire("u")
    counter.release("u")
    counter.release("u")
    assert counter.count("u") == 0


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="per_second > 0"):
        Rate(0.0, 1)
