"""The fanout ports' contracts (ADR 0022), each run against the in-memory fake and the real
adapter: ``EventSource`` on Kafka (a topic private to the test), ``RouteTable`` and the hand-off
on the stack's Redis (keys and channels private to the test). Vendor errors never cross a port:
a server that is away gives the domain's retriable ``Unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import pytest

from messaging.domain.errors import Unavailable
from messaging.domain.ids import new_group_id
from messaging.domain.model import Message
from messaging.fanout.adapters.logged_dead_letters import LoggedDeadLetters
from messaging.fanout.adapters.redis_handoff import RedisHandoff
from messaging.fanout.ports import DeadLetters, EventBatch, EventSource
from messaging.protocol.delivery import Delivery
from messaging.protocol.wire import encode_event
from tests.contract.fanout_targets import (
    LOG_TARGETS,
    REDIS_TARGETS,
    LogTarget,
    RedisTarget,
    broken_routes_and_handoff,
    open_dead_letter_target,
    open_log,
    open_redis_target,
)
from tests.fakes.fanout import RecordingDeadLetters

SECONDS = 30.0


def message(chat_id: str, sequence: int) -> Message:
    return Message(
        chat_id=chat_id,
        sequence=sequence,
        sender_id="u_sender",
        sender_device="d",
        client_message_id=f"c{sequence}",
        text=f"text {sequence}",
        created_at_ms=1_700_000_000_000 + sequence,
    )


def user() -> str:
    return f"u_{uuid.uuid4().hex}"


def instance() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=LOG_TARGETS)
async def log(request: pytest.FixtureRequest) -> AsyncIterator[LogTarget]:
    async with open_log(request.param) as target:
        yield target


@pytest.fixture(params=REDIS_TARGETS)
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[RedisTarget]:
    async with open_redis_target(request.param) as target:
        yield target


async def drain(
    source: EventSource, done: Callable[[list[EventBatch]], bool], *, commit: bool
) -> list[EventBatch]:
    """Poll until ``done`` holds (bounded in time)."""
    batches: list[EventBatch] = []
    async with asyncio.timeout(SECONDS):
        while not done(batches):
            batch = await source.poll(0.5)
            if batch.records or batch.undecodable:
                batches.append(batch)
                if commit:
                    await source.commit(batch)
    return batches


def records_in(batches: Sequence[EventBatch]) -> int:
    return sum(len(b.records) for b in batches)


# ------------------------------------------------------------------ EventSource


async def test_records_come_in_log_order_and_undecodable_ones_are_reported(
    log: LogTarget,
) -> None:
    chats = [new_group_id() for _ in range(3)]
    await log.produce([message(chat, seq) for seq in range(1, 6) for chat in chats])
    await log.produce_raw(0, b"\xffnot an event")
    async with log.source("a") as source:
        batches = await drain(
            source,
            lambda got: records_in(got) >= 15 and any(b.undecodable for b in got),
            commit=True,
        )
        records = [r for b in batches for r in b.records]
        assert len(records) == 15
        for chat in chats:
            assert [r.message.sequence for r in records if r.message.chat_id == chat] == [
                1,
                2,
                3,
                4,
                5,
            ]
            assert records[[r.message.chat_id for r in records].index(chat)].message == (
                message(chat, 1)
            )
        for partition in {r.partition for r in records}:
            offsets = [r.offset for r in records if r.partition == partition]
            assert offsets == sorted(offsets)
        bad = [u for b in batches for u in b.undecodable]
        assert [(u.partition, u.raw) for u in bad] == [(0, b"\xffnot an event")]
        assert bad[0].reason
        assert all(behind == 0 for behind in (await source.backlog()).values())


async def test_a_new_consumer_starts_after_the_committed_batch_and_gets_the_rest_again(
    log: LogTarget,
) -> None:
    chat = new_group_id()
    await log.produce([message(chat, seq) for seq in (1, 2, 3)])
    async with log.source("g") as source:
        await drain(source, lambda got: records_in(got) >= 3, commit=True)
    await log.produce([message(chat, seq) for seq in (4, 5)])
    async with log.source("g") as source:
        batches = await drain(source, lambda got: records_in(got) >= 2, commit=False)
        assert [r.message.sequence for b in batches for r in b.records] == [4, 5]
    async with log.source("g") as source:  # not committed: delivered again (at least once)
        batches = await drain(source, lambda got: records_in(got) >= 2, commit=False)
        assert [r.message.sequence for b in batches for r in b.records] == [4, 5]


async def test_the_backlog_counts_what_is_behind_the_position_on_each_partition(
    log: LogTarget,
) -> None:
    """ADR 0026: what the stall watch reads. Five records on partition 0, none on 1, taken two
    at a time: the backlog is what poll has not returned yet, and 0 once it has."""
    chat = new_group_id()
    for sequence in range(1, 6):
        await log.produce_raw(0, encode_event(message(chat, sequence)))
    async with log.source("b", max_records=2) as source:
        batches = await drain(source, lambda got: records_in(got) >= 1, commit=False)
        taken = records_in(batches)
        assert 1 <= taken < 5
        backlog = await source.backlog()
        assert backlog[0] == 5 - taken
        assert backlog.get(1, 0) == 0
        await drain(source, lambda got: taken + records_in(got) >= 5, commit=False)
        backlog = await source.backlog()
        assert backlog[0] == 0
        assert backlog.get(1, 0) == 0


# ------------------------------------------------------------------ RouteTable


async def test_an_announced_user_is_found_on_its_instance(shared: RedisTarget) -> None:
    alice, bob, carol = user(), user(), user()
    here, there = instance(), instance()
    routes_here, routes_there = shared.routes(here), shared.routes(there)
    try:
        await routes_here.announce(alice)
        await routes_here.announce(bob)
        await routes_there.announce(bob)
        assert await routes_here.lookup({alice, bob, carol}) == {
            here: {alice, bob},
            there: {bob},
        }
        assert await routes_there.lookup(set()) == {}
    finally:
        await routes_here.clear()
        await routes_there.clear()
    assert await routes_here.lookup({alice, bob}) == {}


async def test_a_user_stays_routed_until_the_last_local_socket_withdraws(
    shared: RedisTarget,
) -> None:
    alice, here = user(), instance()
    routes = shared.routes(here)
    await routes.announce(alice)
    await routes.announce(alice)
    await routes.withdraw(alice)
    assert await routes.lookup({alice}) == {here: {alice}}
    await routes.withdraw(alice)
    assert await routes.lookup({alice}) == {}
    await routes.clear()


async def test_expired_entries_are_ignored_at_once(shared: RedisTarget) -> None:
    now = [1_800_000_000.0]
    alice, here = user(), instance()
    routes = shared.routes(here, ttl_seconds=30, clock=lambda: now[0])
    await routes.announce(alice)
    now[0] += 29
    assert await routes.lookup({alice}) == {here: {alice}}
    now[0] += 2
    assert await routes.lookup({alice}) == {}
    await routes.clear()


async def test_lost_routing_state_is_reported_and_re_announced(shared: RedisTarget) -> None:
    lost: list[str] = []
    alice, here = user(), instance()
    routes = shared.routes(here, on_lost=lost.append)
    await routes.refresh_once()
    await routes.announce(alice)
    await routes.refresh_once()
    assert lost == []
    await shared.lose_state(here)
    assert await routes.lookup({alice}) == {}
    await routes.refresh_once()
    assert lost == ["routing_lost"]
    assert await routes.lookup({alice}) == {here: {alice}}
    await routes.check()
    await routes.clear()


class SteppingClock:
    """A clock that moves ``step`` seconds at every reading: a call that takes long."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.step = 0.0

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now


async def test_lapsed_routing_is_reported_once_a_fresh_refresh_wrote_the_entries(
    shared: RedisTarget,
) -> None:
    """ADR 0033: entries that expired before the next refresh (other processes stopped
    handing off here) call for a resync, but only from a refresh whose write outlasts the next
    one: a slow refresh writes an expiry computed before it, maybe already past."""
    lost: list[str] = []
    clock = SteppingClock()
    alice, here = user(), instance()
    routes = shared.routes(here, ttl_seconds=6, on_lost=lost.append, clock=clock)
    await routes.refresh_once()
    await routes.announce(alice)
    clock.now += 2
    await routes.refresh_once()
    assert lost == []
    clock.now += 10  # no refresh for longer than the ttl: the entries lapsed
    assert await routes.lookup({alice}) == {}
    await routes.refresh_once()
    assert lost == ["routing_lost"]
    assert await routes.lookup({alice}) == {here: {alice}}
    clock.step = 3.0  # a refresh taking long: what it writes is stale at once
    await routes.refresh_once()
    assert lost == ["routing_lost"]
    assert await routes.lookup({alice}) == {}
    clock.step = 0.0
    await routes.refresh_once()
    assert lost == ["routing_lost", "routing_lost"]
    assert await routes.lookup({alice}) == {here: {alice}}
    await routes.refresh_once()
    assert lost == ["routing_lost", "routing_lost"]
    await routes.clear()


async def test_a_routing_call_that_stalled_is_followed_by_a_resync(shared: RedisTarget) -> None:
    """A lookup that took longer than a second (the Redis path silent a while): hand-offs
    here may have been lost on the same path, so the next fresh refresh reports it."""
    lost: list[str] = []
    clock = SteppingClock()
    alice, here = user(), instance()
    routes = shared.routes(here, ttl_seconds=6, on_lost=lost.append, clock=clock)
    await routes.refresh_once()
    await routes.announce(alice)
    await routes.refresh_once()
    clock.step = 1.2
    assert await routes.lookup({alice}) == {here: {alice}}
    clock.step = 0.0
    assert lost == []
    await routes.refresh_once()
    assert lost == ["routing_lost"]
    await routes.clear()


async def test_a_twin_using_the_same_instance_id_fails_readiness(shared: RedisTarget) -> None:
    here = instance()
    first, twin = shared.routes(here), shared.routes(here)
    await first.refresh_once()
    await twin.refresh_once()
    await first.check()
    await first.refresh_once()
    with pytest.raises(RuntimeError, match="used by another process"):
        await first.check()
    await first.clear()


@pytest.mark.parametrize("target", REDIS_TARGETS)
async def test_routes_and_hand_off_raise_the_domains_retriable_error_when_the_server_is_away(
    target: str,
) -> None:
    async with broken_routes_and_handoff(target) as (routes, handoff):
        await routes.announce("u_x")  # best effort: never raises
        await routes.withdraw("u_x")
        assert not routes.degraded
        with pytest.raises(Unavailable) as caught:
            await routes.lookup({"u_x"})
        assert caught.value.retriable
        with pytest.raises(Unavailable) as caught:
            await routes.refresh_once()
        assert caught.value.retriable
        assert routes.degraded
        with pytest.raises(Unavailable) as caught:
            await handoff.send("elsewhere", [Delivery(message("c", 1), ("u_x",))])
        assert caught.value.retriable
        await routes.clear()


# ------------------------------------------------------------------ hand-off


class Received:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.resyncs: list[str] = []
        self.arrived = asyncio.Event()
        self.resynced = asyncio.Event()

    def deliver(self, deliveries: Sequence[Delivery]) -> int:
        self.deliveries.extend(deliveries)
        self.arrived.set()
        return len(deliveries)

    def suggest_resync(self, reason: str) -> None:
        self.resyncs.append(reason)
        self.resynced.set()


async def test_a_hand_off_reaches_the_subscribed_instance_only(shared: RedisTarget) -> None:
    here, there, nobody = instance(), instance(), instance()
    receiver, sender = shared.handoff(there), shared.handoff(here)
    received = Received()
    task = asyncio.create_task(receiver.run_subscriber(received))
    try:
        async with asyncio.timeout(SECONDS):
            await receiver.subscribed()
        sent = [Delivery(message(new_group_id(), 7), ("u_a", "u_b"))]
        await sender.send(nobody, sent)  # nobody listens: dropped, no error
        await sender.send(there, sent)
        async with asyncio.timeout(SECONDS):
            await received.arrived.wait()
        assert received.deliveries == sent
        assert received.resyncs == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_redis_hand_off_resubscribes_on_request_and_asks_for_a_resync(
    shared: RedisTarget,
) -> None:
    """ADR 0033: once Redis answers again after an outage, the subscription is renewed on a
    fresh connection (one that lived through a blackhole may be left mid-frame) and the local
    connections are told to resync; hand-offs go on arriving."""
    if shared.kind != "redis":
        pytest.skip("the Redis adapter's own recovery (the fake has no connection)")
    here, there = instance(), instance()
    receiver, sender = shared.handoff(there), shared.handoff(here)
    assert isinstance(receiver, RedisHandoff)
    received = Received()
    task = asyncio.create_task(receiver.run_subscriber(received))
    try:
        async with asyncio.timeout(SECONDS):
            await receiver.subscribed()
            receiver.resubscribe()
            await received.resynced.wait()
            await receiver.subscribed()
        assert received.resyncs == ["handoff_reconnected"]
        sent = [Delivery(message(new_group_id(), 8), ("u_a",))]
        await sender.send(there, sent)
        async with asyncio.timeout(SECONDS):
            await received.arrived.wait()
        assert received.deliveries == sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ------------------------------------------------------------------ dead letters


@asynccontextmanager
async def dead_letters(target: str) -> AsyncIterator[DeadLetters]:
    if target == "fake":
        yield RecordingDeadLetters()
    elif target == "logged":
        yield LoggedDeadLetters("t")
    else:
        async with open_dead_letter_target() as kafka:
            yield kafka.letters


@pytest.mark.parametrize("target", ["fake", "logged", "kafka"])
async def test_parking_a_message_or_a_raw_record_returns(target: str) -> None:
    async with dead_letters(target) as letters:
        await letters.park(message("c", 1), 0, 12, "permanent: bad")
        await letters.park(b"\x00garbage", 1, 13, "undecodable")
        if isinstance(letters, RecordingDeadLetters):
            assert [(p.partition, p.offset) for p in letters.parked] == [(0, 12), (1, 13)]


async def test_the_kafka_dead_letter_topic_keeps_what_was_parked_and_replays_what_decodes() -> None:
    """ADR 0030: a parked record reads back with its bytes, source partition and offset, reason
    and time; replay re-publishes a decodable one to the messages topic keyed by its chat and
    leaves an undecodable one."""
    chat = new_group_id()
    before = int(time.time() * 1000)
    async with open_dead_letter_target() as kafka:
        await kafka.letters.park(message(chat, 7), 3, 1234, "permanent: InvalidInput")
        await kafka.letters.park(b"\x00garbage", 5, 99, "undecodable: ValueError")
        listed = await kafka.topic.list(10)
        assert [(d.offset, d.partition, d.source_offset) for d in listed] == [
            (0, 3, 1234),
            (1, 5, 99),
        ]
        first, second = listed
        assert first.message == message(chat, 7)
        assert first.reason == "permanent: InvalidInput"
        assert before <= first.parked_at_ms <= int(time.time() * 1000)
        assert (second.message, second.raw, second.reason) == (
            None,
            b"\x00garbage",
            "undecodable: ValueError",
        )
        assert [d.offset for d in await kafka.topic.list(1)] == [1]

        one = await kafka.topic.replay([1])
        assert (one.published, [d.offset for d in one.left]) == ((), [1])
        done = await kafka.topic.replay(None)
        assert [d.offset for d in done.published] == [0]
        assert [d.offset for d in done.left] == [1]
        assert await kafka.republished() == [(chat.encode(), message(chat, 7))]
