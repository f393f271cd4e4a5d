"""One contract suite per identity port, run against the in-memory fake and the real adapter.

Time passes through each target's own ``elapse``: the fake clock moves, Redis really waits (the
TTLs in this suite are a fraction of a second). DynamoDB targets are the stack's emulator and,
when the session started one (``MESSAGING_TEST_MOTO_ENDPOINT``), moto as well, each through both
transports (``<emulator>-lean`` and ``<emulator>-aioboto3``, ADR 0023).
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import attrs
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from messaging.identity.adapters.dynamodb_users import DynamoDeviceSessions, DynamoUserDirectory
from messaging.identity.adapters.redis_otp import RedisOtpStore, RedisRateLimiter
from messaging.identity.adapters.senders import DevOtpSender
from messaging.identity.model import OtpChallenge
from messaging.identity.ports import (
    DeviceSessions,
    DevOtpInbox,
    OtpSender,
    OtpStore,
    RateLimiter,
    UserDirectory,
)
from messaging.infra.dynamodb import CLIENT_KINDS, DynamoClient, Retrier, open_dynamo
from messaging.infra.redis import open_redis
from messaging.infra.schema import DEVICES, PHONE_NUMBERS, USERS, ensure_tables
from messaging.settings import Settings
from tests.fakes.identity import (
    FakeClock,
    InMemoryDeviceSessions,
    InMemoryOtpStore,
    InMemoryRateLimiter,
    InMemoryUserDirectory,
    RecordingSender,
)

Elapse = Callable[[float], Awaitable[None]]
MOTO_ENV = "MESSAGING_TEST_MOTO_ENDPOINT"


def phone() -> str:
    return f"+1555{random.randrange(10**7):07d}"


def namespace() -> str:
    return f"contract-{uuid.uuid4().hex[:8]}:"


@attrs.frozen
class Timed:
    """A port implementation and how to let time pass for it."""

    port: Any
    elapse: Elapse


def fake_time() -> tuple[FakeClock, Elapse]:
    clock = FakeClock()

    async def elapse(seconds: float) -> None:
        clock.advance(seconds)

    return clock, elapse


@pytest.fixture(scope="session")
async def redis_client(base_settings: Settings) -> AsyncIterator[Redis]:
    async with open_redis(base_settings.redis_url) as client:
        try:
            await client.ping()
        except RedisError as exc:
            pytest.fail(f"Redis is not up (run `messaging stack up`): {exc}")
        yield client


@pytest.fixture(scope="session")
async def dynamodb_clients(base_settings: Settings) -> AsyncIterator[dict[str, DynamoClient]]:
    endpoints = {"dynamodb": base_settings.dynamodb_endpoint}
    if os.environ.get(MOTO_ENV):
        endpoints["moto"] = os.environ[MOTO_ENV]
    async with AsyncExitStack() as stack:
        clients: dict[str, DynamoClient] = {}
        for name, endpoint in endpoints.items():
            for kind in CLIENT_KINDS:
                client = await stack.enter_async_context(
                    open_dynamo(endpoint, base_settings.aws_region, client=kind)
                )
                async with asyncio.timeout(120):
                    await ensure_tables(
                        client, base_settings.table_prefix, (USERS, PHONE_NUMBERS, DEVICES)
                    )
                clients[f"{name}-{kind}"] = client
        yield clients


def _dynamo_targets() -> list[str]:
    emulators = ["dynamodb", *(["moto"] if os.environ.get(MOTO_ENV) else [])]
    return ["memory", *(f"{e}-{kind}" for e in emulators for kind in CLIENT_KINDS)]


# ------------------------------------------------------------------------------ OtpStore


@pytest.fixture(params=["memory", "redis"])
def otps(request: pytest.FixtureRequest) -> Timed:
    if request.param == "memory":
        clock, elapse = fake_time()
        return Timed(InMemoryOtpStore(clock), elapse)
    redis: Redis = request.getfixturevalue("redis_client")
    return Timed(RedisOtpStore(redis, namespace()), asyncio.sleep)


def challenge(digest: str = "d1", attempts: int = 0) -> OtpChallenge:
    return OtpChallenge(digest=digest, attempts=attempts, expires_at=1_800_000_300.5)


async def test_otp_store_knows_nothing_of_an_unknown_phone(otps: Timed) -> None:
    store: OtpStore = otps.port
    assert await store.attempt(phone()) is None
    assert await store.consume(phone(), "d1") is False


async def test_otp_store_counts_each_try(otps: Timed) -> None:
    store: OtpStore = otps.port
    p = phone()
    await store.put(p, challenge(), 60)
    assert await store.attempt(p) == challenge(attempts=1)
    assert await store.attempt(p) == challenge(attempts=2)


async def test_otp_store_put_replaces_the_code_and_its_tries(otps: Timed) -> None:
    store: OtpStore = otps.port
    p = phone()
    await store.put(p, challenge("old"), 60)
    await store.attempt(p)
    await store.put(p, challenge("new"), 60)
    assert await store.attempt(p) == challenge("new", attempts=1)
    assert await store.consume(p, "old") is False


async def test_otp_store_consumes_only_the_matching_code_once(otps: Timed) -> None:
    store: OtpStore = otps.port
    p = phone()
    await store.put(p, challenge("d1"), 60)
    assert await store.consume(p, "other") is False
    assert await store.consume(p, "d1") is True
    assert await store.consume(p, "d1") is False
    assert await store.attempt(p) is None


async def test_otp_store_phones_are_independent(otps: Timed) -> None:
    store: OtpStore = otps.port
    p, q = phone(), phone()
    await store.put(p, challenge("dp"), 60)
    await store.put(q, challenge("dq"), 60)
    assert await store.consume(p, "dp") is True
    assert await store.attempt(q) == challenge("dq", attempts=1)


async def test_otp_store_of_concurrent_consumes_exactly_one_wins(otps: Timed) -> None:
    store: OtpStore = otps.port
    p = phone()
    await store.put(p, challenge(), 60)
    results = await asyncio.gather(*(store.consume(p, "d1") for _ in range(10)))
    assert results.count(True) == 1


async def test_otp_store_counts_concurrent_tries_atomically(otps: Timed) -> None:
    store: OtpStore = otps.port
    p = phone()
    await store.put(p, challenge(), 60)
    seen = await asyncio.gather(*(store.attempt(p) for _ in range(20)))
    assert sorted(c.attempts for c in seen if c is not None) == list(range(1, 21))


async def test_otp_store_forgets_a_code_after_its_ttl_and_a_try_does_not_revive_it(
    otps: Timed,
) -> None:
    store: OtpStore = otps.port
    p = phone()
    await store.put(p, challenge(), 0.2)
    await otps.elapse(0.3)
    assert await store.attempt(p) is None
    assert await store.attempt(p) is None
    assert await store.consume(p, "d1") is False


# ------------------------------------------------------------------------------ RateLimiter


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest) -> Timed:
    if request.param == "memory":
        clock, elapse = fake_time()
        return Timed(InMemoryRateLimiter(clock), elapse)
    redis: Redis = request.getfixturevalue("redis_client")
    return Timed(RedisRateLimiter(redis, namespace()), asyncio.sleep)


async def test_rate_limiter_allows_up_to_the_limit_in_a_window(limiter: Timed) -> None:
    port: RateLimiter = limiter.port
    decisions = [await port.hit("b", 3, 60) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.count for d in decisions] == [1, 2, 3, 4, 5]
    assert all(1 <= d.retry_after_seconds <= 60 for d in decisions)


async def test_rate_limiter_buckets_are_independent(limiter: Timed) -> None:
    port: RateLimiter = limiter.port
    assert (await port.hit("a", 1, 60)).allowed
    assert not (await port.hit("a", 1, 60)).allowed
    assert (await port.hit("b", 1, 60)).allowed


async def test_rate_limiter_starts_a_new_window_when_one_ends(limiter: Timed) -> None:
    port: RateLimiter = limiter.port
    assert (await port.hit("b", 1, 0.2)).allowed
    assert not (await port.hit("b", 1, 0.2)).allowed
    await limiter.elapse(0.3)
    again = await port.hit("b", 1, 0.2)
    assert (again.allowed, again.count) == (True, 1)


async def test_rate_limiter_counts_concurrent_hits_atomically(limiter: Timed) -> None:
    port: RateLimiter = limiter.port
    decisions = await asyncio.gather(*(port.hit("b", 10, 60) for _ in range(25)))
    assert sum(d.allowed for d in decisions) == 10
    assert sorted(d.count for d in decisions) == list(range(1, 26))


# ------------------------------------------------------------------------------ OtpSender + inbox


@pytest.fixture(params=["memory", "redis"])
def inbox(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return RecordingSender()
    redis: Redis = request.getfixturevalue("redis_client")
    return DevOtpSender(redis, namespace())


async def test_dev_inbox_serves_the_latest_code_sent_to_a_phone(inbox: Any) -> None:
    sender: OtpSender = inbox
    reader: DevOtpInbox = inbox
    p = phone()
    assert await reader.latest(p) is None
    await sender.send(p, "111111", 60)
    await sender.send(p, "222222", 60)
    assert await reader.latest(p) == "222222"
    assert await reader.latest(phone()) is None


# ------------------------------------------------------------------------------ UserDirectory


@pytest.fixture(params=_dynamo_targets())
def directory(request: pytest.FixtureRequest, base_settings: Settings) -> Iterator[Any]:
    if request.param == "memory":
        yield InMemoryUserDirectory()
        return
    client = request.getfixturevalue("dynamodb_clients")[request.param]
    yield DynamoUserDirectory(client, base_settings.table_prefix, Retrier(5.0))


async def test_user_directory_knows_nothing_of_an_unknown_phone(directory: Any) -> None:
    users: UserDirectory = directory
    assert await users.find(phone()) is None


async def test_user_directory_keeps_the_first_user_of_a_phone(directory: Any) -> None:
    users: UserDirectory = directory
    p, first, second = phone(), uuid.uuid4().hex, uuid.uuid4().hex
    assert await users.create(p, first, 1.0) == first
    assert await users.find(p) == first
    assert await users.create(p, second, 2.0) == first
    assert await users.find(p) == first


async def test_user_directory_concurrent_first_logins_get_one_user(directory: Any) -> None:
    users: UserDirectory = directory
    p = phone()
    candidates = [uuid.uuid4().hex for _ in range(8)]
    winners = await asyncio.gather(*(users.create(p, c, 1.0) for c in candidates))
    assert len(set(winners)) == 1
    assert winners[0] in candidates
    assert await users.find(p) == winners[0]


async def test_user_directory_names_the_missing_users(directory: Any) -> None:
    users: UserDirectory = directory
    registered = [uuid.uuid4().hex for _ in range(3)]
    for user_id in registered:
        await users.create(phone(), user_id, 1.0)
    strangers = {uuid.uuid4().hex for _ in range(2)}
    assert await users.missing([*registered, *strangers]) == strangers
    assert await users.missing(registered) == set()
    assert await users.missing([]) == set()


# ------------------------------------------------------------------------------ DeviceSessions


@pytest.fixture(params=_dynamo_targets())
def sessions(request: pytest.FixtureRequest, base_settings: Settings) -> Iterator[Any]:
    if request.param == "memory":
        yield InMemoryDeviceSessions()
        return
    client = request.getfixturevalue("dynamodb_clients")[request.param]
    yield DynamoDeviceSessions(client, base_settings.table_prefix, Retrier(5.0))


async def test_device_sessions_count_logins_per_device(sessions: Any) -> None:
    port: DeviceSessions = sessions
    user = uuid.uuid4().hex
    assert await port.current(user, "device-a1") is None
    assert await port.begin(user, "device-a1", 1.0) == 1
    assert await port.begin(user, "device-a1", 2.0) == 2
    assert await port.begin(user, "device-b1", 3.0) == 1
    assert await port.current(user, "device-a1") == 2
    assert await port.current(uuid.uuid4().hex, "device-a1") is None


async def test_device_sessions_end_only_the_current_epoch_once(sessions: Any) -> None:
    port: DeviceSessions = sessions
    user = uuid.uuid4().hex
    assert await port.end(user, "device-a1", 1) is False  # never logged in
    epoch = await port.begin(user, "device-a1", 1.0)
    assert await port.end(user, "device-a1", epoch - 1) is False
    assert await port.end(user, "device-a1", epoch) is True
    assert await port.end(user, "device-a1", epoch) is False
    after = await port.current(user, "device-a1")
    assert after is not None
    assert after != epoch
    assert await port.begin(user, "device-a1", 2.0) > after


async def test_device_sessions_concurrent_logins_get_distinct_epochs(sessions: Any) -> None:
    port: DeviceSessions = sessions
    user = uuid.uuid4().hex
    epochs = await asyncio.gather(*(port.begin(user, "device-a1", 1.0) for _ in range(10)))
    assert sorted(epochs) == list(range(1, 11))
