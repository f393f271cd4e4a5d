"""The client keeps a quiet connection alive with ``ping`` frames (the server closes silent ones
with 4010): against a real app whose idle timeout is one second."""

from __future__ import annotations

import asyncio

import pytest

from messaging.client import ChatClient, ClientOptions, RestClient
from tests.harness import AppProcess


@pytest.mark.parametrize("extra_app", [{"MESSAGING_WS_IDLE_TIMEOUT_SECONDS": "1"}], indirect=True)
async def test_a_quiet_client_is_not_closed_for_idleness(extra_app: AppProcess) -> None:
    async with RestClient(extra_app.base_url) as rest:
        session = await rest.login_dev("+15550001234", "keepalive-device-1")
    options = ClientOptions(keepalive_interval=0.25)
    async with ChatClient(rest.ws_url, session.token, session.device_id, options=options) as client:
        await asyncio.sleep(3)
        assert client.stats.reconnects == 0
        assert 4010 not in client.stats.close_codes
