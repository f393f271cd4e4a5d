"""Graceful shutdown on SIGTERM: sockets closed with 1001 going away, routing left clean."""

from __future__ import annotations

import asyncio

import httpx
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
        assert await redis.zscore(f"route:{account.user_id}", doomed.instance_id) is not None
        assert doomed.proc is not None
        doomed.proc.terminate()  # SIGTERM
        assert await socket.closed_with(seconds=15) == 1001
        assert doomed.proc.wait(20) in (0, -15)
        assert await redis.zscore(f"route:{account.user_id}", doomed.instance_id) is None
        assert not await redis.exists(f"instance:{doomed.instance_id}")
    assert "Application shutdown complete" in doomed.log_tail(200)


async def test_two_processes_with_one_instance_id_are_reported_unready(stack: Settings) -> None:
    first = AppProcess("twin", app_env(stack))
    second = AppProcess("twin", app_env(stack))
    second.instance_id = first.instance_id
    second.env["MESSAGING_INSTANCE_ID"] = first.instance_id
    for app in (first, second):
        app.env["MESSAGING_ROUTING_TTL_SECONDS"] = "3"
        app.start()
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(50):
                answers = [(await http.get(a.base_url + "/readyz")).json() for a in (first, second)]
                if any("routing" in answer["failing"] for answer in answers):
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail(f"no process noticed the shared instance id: {answers}")
    finally:
        first.kill()
        second.kill()
