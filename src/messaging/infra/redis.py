"""The Redis client (ephemeral state only: presence, routing, rate-limit counters)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


@asynccontextmanager
async def open_redis(url: str) -> AsyncIterator[Redis]:
    """A pooled client. ``from_url`` gives connections no retry at all unless one is passed:
    after a Redis restart every pooled connection is stale, and the first command on each would
    fail. Three retries with jittered backoff (reconnecting each time) cover that."""
    client: Redis = Redis.from_url(
        url,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        health_check_interval=10,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    try:
        yield client
    finally:
        await client.aclose()


class RedisHealth:
    name = "redis"

    def __init__(self, client: Redis) -> None:
        self._client = client

    async def check(self) -> None:
        await self._client.ping()
