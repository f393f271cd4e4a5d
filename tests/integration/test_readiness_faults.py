"""``/readyz`` names the dependency that is down, and recovers when it is back."""

from __future__ import annotations

import time

import httpx
import pytest

from messaging.devstack.stack import start_service, stop_service
from messaging.settings import Settings
from tests.harness import AppProcess


def _ready(app: AppProcess) -> httpx.Response:
    return httpx.get(app.base_url + "/readyz", timeout=10)


@pytest.mark.parametrize("service", ["kafka", "redis"])
def test_readyz_names_a_stopped_dependency(
    stack: Settings, apps: list[AppProcess], service: str
) -> None:
    app = apps[0]
    assert _ready(app).status_code == 200
    assert stop_service(stack, service)
    try:
        answer = _ready(app)
        assert answer.status_code == 503
        body = answer.json()
        assert body["status"] == "unavailable"
        assert body["failing"] == [service]
        assert body["checks"][service]["ok"] is False
    finally:
        start_service(stack, service, say=lambda _line: None)
    deadline = time.monotonic() + 30
    for each in apps:  # every app recovers, and later tests find them ready
        while _ready(each).status_code != 200:
            assert time.monotonic() < deadline, _ready(each).text
            time.sleep(0.5)
    # Pooled connections to the old server are stale: requests still succeed (the clients
    # reconnect and retry) rather than answer 503.
    for each in apps:
        for n in range(5):
            answer = httpx.post(each.base_url + "/v1/auth/otp", json={"phone": f"+1555000{n:04d}"})
            assert answer.status_code in (202, 429), answer.text
