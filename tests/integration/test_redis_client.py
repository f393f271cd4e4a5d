"""The Redis client survives a Redis restart: the next command reconnects instead of failing."""

from __future__ import annotations

from messaging.devstack.stack import start_service, stop_service
from messaging.infra.redis import open_redis
from messaging.settings import Settings


async def test_the_first_command_after_a_restart_succeeds(stack: Settings) -> None:
    async with open_redis(stack.redis_url) as redis:
        assert await redis.set(f"{stack.table_prefix}probe", "1")
        assert stop_service(stack, "redis")
        start_service(stack, "redis", say=lambda _line: None)
        assert await redis.set(f"{stack.table_prefix}probe", "2")
        assert await redis.get(f"{stack.table_prefix}probe") == b"2"
