"""The Redis client (ephemeral state only: presence, routing, rate-limit counters)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis


@asynccontextmanager
async def open_redis(url: str) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(
        url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=10
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
