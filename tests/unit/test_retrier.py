from __future__ import annotations

import random

import pytest

from messaging.domain.errors import StoreUnavailable
from messaging.infra.dynamodb import DynamoError, Retrier


def client_error(code: str, status: int = 400) -> DynamoError:
    return DynamoError(code, code, status=status)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def retrier(clock: FakeClock, deadline: float = 1.0) -> Retrier:
    return Retrier(deadline, sleep=clock.sleep, clock=clock, rng=random.Random(1))


async def test_throttling_is_retried_until_success() -> None:
    clock = FakeClock()
    failures = [client_error("ThrottlingException"), client_error("InternalServerError", 500)]

    async def operation() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert await retrier(clock).run("put", operation) == "done"
    assert len(clock.sleeps) == 2


async def test_a_conditional_failure_is_not_retried() -> None:
    clock = FakeClock()
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise client_error("ConditionalCheckFailedException")

    with pytest.raises(DynamoError):
        await retrier(clock).run("put", operation)
    assert calls == 1


async def test_after_the_deadline_the_caller_gets_a_retriable_error() -> None:
    clock = FakeClock()

    async def operation() -> None:
        raise client_error("ProvisionedThroughputExceededException")

    with pytest.raises(StoreUnavailable) as info:
        await retrier(clock, deadline=0.5).run("send", operation)
    assert info.value.retriable
    assert "within 0.5s" in str(info.value)
    assert clock.now < 0.5
