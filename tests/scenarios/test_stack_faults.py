"""Faults of the stack under traffic, on two app processes: Kafka's broker restarted, Redis
flushed and restarted, the DynamoDB API unavailable for a few seconds. Each ends with the
consistency checker over every client's history and final view."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from tests.scenarios.harness import Member, Scenario, Traffic, published

PUBLISH_FAILURES = "messaging_outbox_publish_failures_total"


async def population(scenario: Scenario, count: int = 6) -> list[Member]:
    """``count`` members alternating between the two processes, in two groups and two 1:1
    chats, connected."""
    a, b = scenario.apps
    members = [await scenario.member(f"m{i}", (a, b)[i % 2]) for i in range(count)]
    half = count // 2
    await scenario.group(members[0], members[: half + 1], "first")
    await scenario.group(members[half], members[half - 1 :], "second")
    await scenario.direct(members[0], members[-1])
    await scenario.direct(members[1], members[2])
    for member in members:
        await member.connect()
    return members


def acked_locations(members: list[Member]) -> set[tuple[str, int]]:
    return {
        (r.chat_id, r.sequence)
        for m in members
        for r in m.history.sends
        if r.outcome == "acked" and r.sequence is not None
    }


class KafkaProducerStuck(AssertionError):
    """After the broker restart, publishing did not recover (docs/failure-scenarios.md, 'Bugs
    found', 1: fixed by a producer without idempotence, ADR 0006)."""


async def test_a_kafka_broker_restart_during_traffic_loses_nothing(isolated: Scenario) -> None:
    """Sends keep succeeding while the broker is down (they need only the database), nothing
    acknowledged is lost, and, once the broker is back, what was persisted meanwhile reaches
    Kafka (direct publish, else the outbox sweeper) and real-time delivery resumes in every chat
    without any explicit sync: one more message per chat from each process reaches everyone.

    Runs on processes of its own (``isolated``), so a regression of the stuck-producer bug
    cannot damage the shared processes (``KafkaProducerStuck`` names it)."""
    scenario = isolated
    members = await population(scenario)
    traffic = Traffic(members, random.Random(1)).start()
    try:
        await asyncio.sleep(2.0)
        await scenario.service_outage("kafka", seconds=4.0)
        await asyncio.sleep(3.0)
    finally:
        await traffic.stop()
    await scenario.settle_sends()
    problems: list[str] = []
    try:
        await scenario.converge(seconds=20)
    except pytest.fail.Exception as failed:
        problems.append(str(failed))
    # Publishes still in flight from the outage end (they succeed, or fail at their timeout);
    # from then on, a publish that fails on a healthy broker is the stuck-producer bug.
    recovered = await quiet_publish_failures(scenario)
    try:
        for chat_id, chat_members in scenario.chat_members.items():
            for app in scenario.apps:
                sender = next((m for m in chat_members if m.app is app), chat_members[0])
                await sender.send(chat_id, f"after the restart, via {app.name}")
        await scenario.converge(seconds=15)
        await wait_published(scenario, acked_locations(members), seconds=15)
    except pytest.fail.Exception as failed:
        problems.append(str(failed))
    # Whatever the liveness, nothing acknowledged is lost: the explicit final sync and the
    # checker must pass.
    await scenario.final_check()
    now = await publish_failures(scenario)
    if now != recovered:
        raise KafkaProducerStuck(
            f"publish failures per process after the broker was back: {recovered} -> {now}",
            *problems,
        )
    if problems:
        scenario.fail("real-time delivery did not resume after the broker restart", problems)


async def publish_failures(scenario: Scenario) -> list[float]:
    return [await app.metric(PUBLISH_FAILURES) for app in scenario.apps]


async def quiet_publish_failures(scenario: Scenario, seconds: float = 20.0) -> list[float]:
    """The processes' publish-failure counts once they have not moved for 3 s."""
    last, still = await publish_failures(scenario), 0
    for _ in range(int(seconds / 0.5)):
        await asyncio.sleep(0.5)
        now = await publish_failures(scenario)
        last, still = now, (still + 1 if now == last else 0)
        if still >= 6:
            break
    scenario.note(f"publish failures per process after the outage: {last}")
    return last


async def wait_published(scenario: Scenario, acked: set[tuple[str, int]], seconds: float) -> None:
    """Every acknowledged message is in the Kafka topic (ADR 0006: publish after persist)."""
    topic = scenario.settings.kafka_messages_topic
    for _ in range(int(seconds)):
        missing = acked - await published(scenario.settings, topic)
        if not missing:
            scenario.note(f"all {len(acked)} acknowledged messages are in Kafka")
            return
        await asyncio.sleep(1.0)
    scenario.fail(
        f"{len(missing)} acknowledged message(s) never published to Kafka", [str(sorted(missing))]
    )


async def test_redis_flushed_and_restarted_during_traffic_loses_nothing(
    scenario: Scenario,
) -> None:
    """Redis holds routes and the hand-off channel only. After FLUSHALL, a burst sent at once
    (while the routes are gone) still reaches every member without any explicit sync (the
    processes notice the lost routing and tell their sockets to resync); then Redis is stopped
    for two seconds during traffic and started empty."""
    members = await population(scenario)
    for member in members:  # everyone has a message in every chat of theirs
        for chat_id in sorted(member.chats):
            await member.send(chat_id, f"before the flush from {member.name}")
    await scenario.converge()

    await scenario.flush_redis()
    burst = [m.submit(c, f"right after the flush from {m.name}") for m in members for c in m.chats]
    await asyncio.gather(*burst)
    await scenario.converge(seconds=30)
    assert sum(m.chat.stats.resyncs for m in members) >= 1, "no process said resync"

    traffic = Traffic(members, random.Random(2)).start()
    try:
        await asyncio.sleep(1.5)
        await scenario.service_outage("redis", seconds=2.0)
        await asyncio.sleep(2.0)
    finally:
        await traffic.stop()
    await scenario.settle_sends()
    await scenario.converge(seconds=60)
    await scenario.final_check()


async def test_the_dynamodb_api_down_for_a_few_seconds_half_writes_nothing(
    scenario: Scenario,
) -> None:
    """While the DynamoDB API is down, sends fail with a retriable ``store_unavailable`` (or
    ``unavailable``) and the client retries them with the same ``client_message_id``; nothing
    is half-written (REST history stays gapless, each id once) and traffic resumes."""
    members = await population(scenario, count=4)
    traffic = Traffic(members, random.Random(3)).start()
    try:
        await asyncio.sleep(1.5)
        await scenario.service_outage("dynamodb", seconds=7.0)
        await asyncio.sleep(3.0)
    finally:
        await traffic.stop()
    await scenario.settle_sends(seconds=120)
    errors = Counter(code for m in members for r in m.history.sends for code in r.errors)
    assert errors["store_unavailable"] + errors["unavailable"] >= 1, errors
    retried = [r for m in members for r in m.history.sends if r.errors and r.outcome == "acked"]
    assert retried, "some send failed retriably, was retried and succeeded"
    for chat_id, view in (await scenario.rest_views()).items():
        entries = next(iter(view.values()))
        ids = Counter((e.sender_id, e.client_message_id) for e in entries)
        assert [e.sequence for e in entries] == list(range(1, len(entries) + 1)), chat_id
        assert max(ids.values(), default=1) == 1, chat_id
    await scenario.converge(seconds=60)
    await scenario.final_check()
