"""``/readyz`` names the dependency that is down, and recovers when it is back. Kafka down
degrades freshness, not readiness (200 ``degraded``); Redis down makes the process unready
(503 ``unavailable``), ADR 0033."""

from __future__ import annotations

import time

import httpx
import pytest

from messaging.devstack.stack import start_service, stop_service
from messaging.settings import Settings
from tests.harness import AppProcess


def _ready(app: AppProcess) -> httpx.Response:
    return httpx.get(app.base_url + "/readyz", timeout=10)


@pytest.mark.parametrize(
    ("service", "code", "status", "failing", "degraded"),
    [("kafka", 200, "degraded", [], ["kafka"]), ("redis", 503, "unavailable", ["redis"], [])],
)
def test_readyz_names_a_stopped_dependency(
    stack: Settings,
    apps: list[AppProcess],
    service: str,
    code: int,
    status: str,
    failing: list[str],
    degraded: list[str],
) -> None:
    app = apps[0]
    assert _ready(app).status_code == 200
    assert stop_service(stack, service)
    try:
        answer = _ready(app)
        assert answer.status_code == code
        body = answer.json()
        assert body["status"] == status
        assert body["failing"] == failing
        # The fanout consumer may show too once its polls fail: not critical either.
        assert [name for name in body["degraded"] if name != "fanout"] == degraded
        assert body["checks"][service]["ok"] is False
    finally:
        start_service(stack, service, say=lambda _line: None)
    deadline = time.monotonic() + 30
    for each in apps:  # every app recovers, and later tests find them ready
        while _ready(each).json()["status"] != "ready":
            assert time.monotonic() < deadline, _ready(each).text
            time.sleep(0.5)
    # Pooled connections to the old server are stale: requests still succeed (the clients
    # reconnect and retry) rather than answer 503.
    for each in apps:
        for n in range(5):
            answer = httpx.post(each.base_url + "/v1/auth/otp", json={"phone": f"+1555000{n:04d}"})
            assert answer.status_code in (202, 429), answer.text
