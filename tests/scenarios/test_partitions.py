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
import pytest

from tests.integration.raw import Socket, authed, direct_chat, login
from tests.scenarios.conftest import Network
from tests.scenarios.harness import Traffic
from tests.scenarios.partitions import partition_of, partitions_consumed
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
        async with scenario.fault("a cut from Redis"):
            await network.proxy.blackhole(a.paths["redis"])
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
            waited = time.monotonic() - started
            scenario.note(f"a's /readyz: {status} {failing} after {waited:.1f}s")
            await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - started)))
            await network.proxy.heal(a.paths["redis"])
        await asyncio.sleep(3.0)
    finally:
        await traffic.stop()
    assert status == 503, (status, failing)
    assert "redis" in failing or "routing" in failing, failing
    await scenario.settle_sends()
    await scenario.converge(seconds=45)
    await scenario.final_check()


SLOW_MILLIS = 500
"""The lab console's "Slow 500 ms" (ADR 0032): the same toxic, through the same client."""


async def test_a_slow_store_path_delays_sends_and_loses_nothing(network: Network) -> None:
    """Process a's path to the DynamoDB API slowed by 500 ms (with jitter) both ways under
    traffic: a send on a is slower by at least that much, yet acknowledged (latency, not an
    outage: below the store deadline nothing fails); after healing every send settles, members
    converge without help and the checker passes."""
    scenario = network.scenario
    a, _ = network.apps
    members = await population(scenario)
    sender, peer = await login(a), await login(a)
    chat_id = await direct_chat(a, sender, peer)
    probe = await authed(a, sender)
    traffic = Traffic(members, random.Random(32)).start()
    try:
        await asyncio.sleep(2.0)
        await network.proxy.latency(a.paths["dynamodb"], SLOW_MILLIS, SLOW_MILLIS // 5)
        scenario.note(f"a's DynamoDB path slowed by {SLOW_MILLIS} ms")
        started = time.monotonic()
        await probe.send(
            {"type": "send_message", "chat_id": chat_id, "client_message_id": "s1", "text": "slow"}
        )
        answer = await _answer(probe, 30.0)
        took = time.monotonic() - started
        scenario.note(f"probe answered {answer['type']} after {took:.2f}s")
        await asyncio.sleep(4.0)
        await network.proxy.heal(a.paths["dynamodb"])
        scenario.note("healed")
        await asyncio.sleep(2.0)
    finally:
        await traffic.stop()
    assert answer["type"] == "send_ack", answer
    assert took >= SLOW_MILLIS / 1000, f"the probe took {took:.2f}s: the path was not slowed"
    await scenario.settle_sends()
    await scenario.converge(seconds=45)


HANDOFF_BOUND = 15.0
"""After a cut of the hand-off path heals, members converge without sync within this."""


async def test_a_one_way_cut_of_the_handoff_path_in_a_busy_group_loses_nothing(
    network: Network,
) -> None:
    """A busy group chat with members on both processes, its Kafka partition held by process
    b's consumer. Process a's Redis path (routing and the pub/sub hand-off, ADR 0007) is cut one
    way, a -> Redis, for 8 s: a can neither renew its routes nor look routes up nor hand off,
    while what Redis sends it still arrives. Its routes expire (TTL 3 s), so b stops handing
    a's members their messages. a's senders stop a second before b's, and all traffic before
    healing, so no later message can fill a gap: after healing, a's members must get what they
    missed through the mechanisms themselves (a re-announces its routes, finds them lost and
    tells its sockets to resync), without an explicit sync, within a bound; the checker
    passes."""
    scenario = network.scenario
    a, b = network.apps
    members = [await scenario.member(f"m{i}", (a, b)[i % 2]) for i in range(6)]
    # A chat whose partition b's consumer holds: if a's own consumer held it, a would serve
    # its members without Redis and the cut would not bite (seen in one CI rehearsal).
    held = await partitions_consumed(scenario.settings, members=2) or {}
    scenario.note(f"partitions by process: { {k: sorted(v) for k, v in held.items()} }")
    assert not held or b.instance_id in held, (b.instance_id, held)
    theirs, count = held.get(b.instance_id, frozenset()), sum(len(p) for p in held.values())

    def on_b(chat_id: str) -> bool:
        return partition_of(chat_id, count) in theirs

    chat_id = await scenario.group(members[0], members[1:], "busy", accept=on_b if theirs else None)
    scenario.note(f"the group's partition: {partition_of(chat_id, count) if count else '?'}")
    for member in members:
        await member.connect()
    # a's senders stop a second before b's: a's own messages reach a's members directly and
    # reveal gaps that a client fills by syncing, so the last second's messages (b's) are the
    # ones that only the recovery can bring them.
    on_a = Traffic([m for m in members if m.app is a], random.Random(33), interval=(0.02, 0.2))
    on_b = Traffic([m for m in members if m.app is b], random.Random(34), interval=(0.02, 0.2))
    on_a.start()
    on_b.start()
    async with scenario.fault("a -> Redis cut (hand-off path)"):
        try:
            await asyncio.sleep(2.0)
            await network.proxy.blackhole(a.paths["redis"], stream="upstream")
            await asyncio.sleep(7.0)
            await on_a.stop()
            await asyncio.sleep(1.0)
        finally:
            await on_a.stop()
            await on_b.stop()
        scenario.note(f"traffic stopped after {on_a.sent} sends on a, {on_b.sent} on b")
        head = (await scenario.heads())[chat_id]
        missed = {m.name: head - m.chat.delivered_sequence(chat_id) for m in members if m.app is a}
        await network.proxy.heal(a.paths["redis"])
    healed = time.monotonic()
    scenario.note(f"a's members were behind by {missed} of {head}")
    await scenario.settle_sends()
    await scenario.converge(seconds=HANDOFF_BOUND)
    took = time.monotonic() - healed
    resyncs = sum(m.chat.stats.resyncs for m in members)
    scenario.note(f"converged {took:.1f}s after healing ({resyncs} resync hint(s))")
    await scenario.final_check()  # nothing lost, whether the cut bit or not
    if not any(missed.values()):
        # The direct path also runs while routing is degraded (ADR 0033, amended 2026-12-02):
        # a's senders' messages reach a's members without Redis, and the chat's partition is
        # b's so that b's senders' messages need the hand-off. Should a's members still have
        # missed nothing (the group's assignment unknown), there was nothing to recover: a
        # skip, not a pass of the bound.
        pytest.skip("the cut did not bite: a's members missed nothing")
    assert took <= HANDOFF_BOUND + 5, took
