"""Network partitions of one app process's paths while both ends stay up (ADR 0028): its path to
Redis cut. (Its store path slow or cut and its clients' path half-open: test_store_path.py,
ADR 0034.) Each ends with the consistency checker over every client's history and final view;
docs/failure-scenarios.md states the bounds and how each was shown to fail with its mechanism
switched off."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx

from tests.integration.raw import Socket
from tests.scenarios.conftest import Network
from tests.scenarios.harness import Traffic
from tests.scenarios.test_stack_faults import population

READY_BOUND = 5.0
"""``/readyz`` answers within this, whatever a dependency does."""


async def _answer(socket: Socket, seconds: float) -> dict[str, Any]:
    """The first ``send_ack`` or ``error`` frame."""
    async with asyncio.timeout(seconds):
        while True:
            frame = await socket.recv(seconds)
            if frame["type"] in ("send_ack", "error"):
                return frame


async def test_a_process_cut_from_redis_reports_it_and_loses_nothing(network: Network) -> None:
    """Process a cannot reach Redis (routing and hand-off, ADR 0007) for 10 s under traffic on
    both processes: its readiness says so within a bound (a balancer can act on it), sends keep
    working (they need only the store), and after healing every member converges through live
    delivery or sync, with nothing lost: the checker passes."""
    scenario = network.scenario
    a, _ = network.apps
    members = await population(scenario)
    traffic = Traffic(members, random.Random(30)).start()
    try:
        await asyncio.sleep(2.0)
        await network.proxy.blackhole(a.paths["redis"])
        scenario.note("a cut from Redis")
        started = time.monotonic()
        status, failing = 0, []
        async with httpx.AsyncClient(timeout=READY_BOUND + 5) as http:
            while time.monotonic() - started < 10.0:
                asked = time.monotonic()
                answer = await http.get(a.base_url + "/readyz")
                answered = time.monotonic() - asked
                status, failing = answer.status_code, answer.json()["failing"]
                assert answered <= READY_BOUND, f"/readyz took {answered:.1f}s"
                if status == 503:
                    break
                await asyncio.sleep(0.5)
        scenario.note(f"a's /readyz: {status} {failing} after {time.monotonic() - started:.1f}s")
        await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - started)))
        await network.proxy.heal(a.paths["redis"])
        scenario.note("healed")
        await asyncio.sleep(3.0)
    finally:
        await traffic.stop()
    assert status == 503, (status, failing)
    assert "redis" in failing or "routing" in failing, failing
    await scenario.settle_sends()
    await scenario.converge(seconds=45)
    await scenario.final_check()
