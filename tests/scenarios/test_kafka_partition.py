"""An app process cut from Kafka while it keeps its store, Redis and clients (ADR 0028).

Kafka clients learn the broker's address from its metadata, so a proxy in front of the
bootstrap address alone would be bypassed. This module starts a Kafka node of its own
(alternate ports, a private stack directory, beside the shared stack) with one extra listener
per app process (``MESSAGING_STACK_KAFKA_PROXY_LISTENERS``), each advertising the address of a
Toxiproxy path that forwards to it; each app process bootstraps through its own path, so every
byte it exchanges with Kafka crosses that path. docs/failure-scenarios.md records the bound and
how the test was shown to fail with the repair path switched off.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from messaging.settings import Settings
from tests.scenarios.conftest import Network, proxied_network
from tests.scenarios.harness import Traffic, published
from tests.scenarios.test_stack_faults import acked_locations, population

CUT_SECONDS = 15.0
CONVERGED_BOUND = 15.0
"""After healing, every member holds every message within this (measured: see the docs)."""


@pytest.fixture
async def kafka_network(
    scenario_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Network]:
    async with proxied_network(
        scenario_settings, request.node.name, "kc", {}, kafka_dir=tmp_path
    ) as network:
        yield network


async def test_a_process_cut_from_kafka_loses_no_acked_message_and_heals_within_a_bound(
    kafka_network: Network,
) -> None:
    """Process a's Kafka path is blackholed both ways for 10 s under traffic on both processes.
    Sends on a are still acknowledged (they need only the store); what a cannot publish stays
    in the outbox, where the other process's sweeper finds it (the repair path, ADR 0006) and
    publishes it; a's members keep getting messages handed off from the process that now
    consumes every partition. Every member converges without an explicit sync within a bound
    after healing, every acknowledged message is in the log, and the checker passes."""
    scenario = kafka_network.scenario
    a, b = kafka_network.apps
    members = await population(scenario)
    on_a = [m for m in members if m.app is a]
    traffic = Traffic(members, random.Random(32)).start()
    try:
        await asyncio.sleep(2.0)
        acked_before = acked_locations(on_a)
        async with scenario.fault("a cut from Kafka"):
            await kafka_network.proxy.blackhole(a.paths["kafka"])
            await asyncio.sleep(CUT_SECONDS)
            acked_during = acked_locations(on_a) - acked_before
            swept = await b.metric("messaging_outbox_published_total", 'path="sweep"')
            failed = await a.metric("messaging_outbox_publish_failures_total")
            scenario.note(
                f"during the cut: b swept {swept:g} message(s); a's publish failures {failed:g}"
            )
            await kafka_network.proxy.heal(a.paths["kafka"])
        healed = time.monotonic()
        scenario.note(f"{len(acked_during)} sends acked on a during the cut")
        await asyncio.sleep(2.0)
    finally:
        await traffic.stop()
    assert len(acked_during) >= 5, "a acknowledged no sends while cut from Kafka"
    assert swept > 0, "the other process's sweeper published nothing of a's outbox"
    await scenario.settle_sends()
    await scenario.converge(seconds=CONVERGED_BOUND)
    took = time.monotonic() - healed
    scenario.note(f"converged {took:.1f}s after healing")
    assert took <= CONVERGED_BOUND + 5, took
    # Clients fill a gap by sync when a later message arrives, so convergence alone would not
    # notice an acknowledged message that never reached the log: read the log back.
    missing: set[tuple[str, int]] = set()
    for _ in range(20):
        missing = acked_locations(members) - await published(
            scenario.settings, scenario.settings.kafka_messages_topic
        )
        if not missing:
            break
        await asyncio.sleep(0.5)
    assert not missing, f"{len(missing)} acknowledged message(s) never reached Kafka"
    await scenario.final_check()
