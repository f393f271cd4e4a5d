"""Graceful shutdown on SIGTERM: sockets closed with 1001 going away, routing left clean."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from messaging.settings import Settings
from tests.harness import AppProcess
from tests.integration.conftest import app_env
from tests.integration.raw import authed, login


@pytest.fixture
def doomed(stack: Settings) -> AppProcess:
    return AppProcess("doomed", app_env(stack)).start()


async def test_sigterm_closes_sockets_with_going_away_and_clears_routes(
    stack: Settings, doomed: AppProcess
) -> None:
    account = await login(doomed)
    socket = await authed(doomed, account)
    async with Redis.from_url(stack.redis_url) as redis:
        assert await redis.zscore(f"route:{account.user_id}", "doomed") is not None
        assert doomed.proc is not None
        doomed.proc.terminate()  # SIGTERM
        assert await socket.closed_with(seconds=15) == 1001
        assert doomed.proc.wait(20) in (0, -15)
        assert await redis.zscore(f"route:{account.user_id}", "doomed") is None
        assert not await redis.exists("instance:doomed")
    assert "Application shutdown complete" in doomed.log_tail(200)
