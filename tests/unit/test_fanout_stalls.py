"""Stalled fanout partitions (ADR 0026), on fakes with a fake clock: a partition with records
pending and none finished for longer than the bound is named by ``/readyz`` (200 ``degraded``,
check ``fanout_progress``) and counted in ``/metrics``; a partition with nothing pending never
is; progress restarts the clock, and the report clears when the partition moves again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from starlette.applications import Starlette

from messaging.domain.ids import new_group_id
from messaging.domain.model import Membership
from messaging.fanout.consumer import FanoutConsumer
from messaging.fanout.service import FanoutService
from messaging.fanout.stalls import StallWatch
from messaging.metrics import Metrics
from messaging.web import health
from tests.fakes.fanout import (
    FakeEventSource,
    InMemoryEventLog,
    Local,
    NoHandoff,
    RecordingDeadLetters,
    message,
)
from tests.polling import eventually

ALICE = "u_" + "a" * 32
BOUND = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Members:
    """Alice is in every chat; reading a ``gated`` chat's members waits for the gate, and each
    read may run ``on_read`` first."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gated: set[str] = set()
        self.reads = 0
        self.on_read: Callable[[], object] | None = None

    async def active_memberships(self, chat_id: str) -> list[Membership]:
        self.reads += 1
        if self.on_read is not None:
            result = self.on_read()
            if asyncio.iscoroutine(result):
                await result
        if chat_id in self.gated:
            await self.gate.wait()
        return [Membership(chat_id=chat_id, user_id=ALICE, joined_seq=0)]


class NoRoutes:
    async def lookup(self, user_ids: object) -> dict[str, set[str]]:
        return {}


class World:
    def __init__(self, max_records: int = 500) -> None:
        self.clock = Clock()
        self.log = InMemoryEventLog(partitions=2)
        self.source = FakeEventSource(self.log, max_records=max_records)
        self.members = Members()
        self.metrics = Metrics()
        self.consumer = FanoutConsumer(
            self.source,
            FanoutService(
                self.members,
                NoRoutes(),
                NoHandoff(),
                Local(),
                instance_id="here",
                metrics=self.metrics,
            ),
            RecordingDeadLetters(),
            self.metrics,
            max_attempts=3,
            max_backoff_seconds=0.1,
            first_backoff_seconds=0.01,
            poll_seconds=0.01,
            stall_seconds=BOUND,
            clock=self.clock,
        )
        app = Starlette(routes=health.routes(lambda _: [self.consumer, self.consumer.progress]))
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

    def chat_on(self, partition: int) -> str:
        while True:
            chat = new_group_id()
            if self.log.partition_of(chat) == partition:
                return chat

    def committed(self, partition: int) -> int:
        return self.log.committed.get(("fanout", partition), 0)

    async def until_committed(self, partition: int, offset: int) -> None:
        await eventually(lambda: self.committed(partition) == offset)

    def stalled_gauge(self) -> float:
        value = self.metrics.registry.get_sample_value("messaging_fanout_stalled_partitions")
        return -1.0 if value is None else value

    async def readyz(self) -> tuple[int, str, list[str], str]:
        answer = await self.http.get("/readyz")
        body = answer.json()
        error = body["checks"]["fanout_progress"].get("error", "")
        return answer.status_code, body["status"], body["degraded"], error


@contextlib.asynccontextmanager
async def running(world: World) -> AsyncIterator[None]:
    task = asyncio.create_task(world.consumer.run())
    try:
        async with world.http:
            yield
    finally:
        world.members.gate.set()
        world.source.held = frozenset()
        async with asyncio.timeout(5):
            await world.consumer.stop()
        await task


async def test_a_handler_stuck_on_a_batch_is_reported_after_the_bound_and_clears_on_progress() -> (
    None
):
    world = World()
    stuck = world.chat_on(0)
    world.members.gated.add(stuck)
    async with running(world):
        world.log.append(message(stuck, 1))
        await eventually(lambda: world.members.reads >= 1)  # the batch is in hand, its fanout hangs
        world.clock.now += BOUND - 1
        assert await world.readyz() == (200, "ready", [], "")
        assert world.stalled_gauge() == 0
        world.clock.now += 2
        status, state, degraded, error = await world.readyz()
        # ADR 0026: freshness, not the ability to serve (ADR 0033's rule).
        assert (status, state, degraded) == (200, "degraded", ["fanout_progress"])
        assert "partition(s) 0 (31s) with records pending" in error
        assert world.stalled_gauge() == 1
        world.members.gate.set()
        await eventually(lambda: world.committed(0) == 1)
        await eventually(lambda: world.stalled_gauge() == 0)
        assert await world.readyz() == (200, "ready", [], "")


async def test_a_partition_whose_records_never_come_is_named_while_the_others_progress() -> None:
    world = World()
    world.source.held = frozenset({1})
    flowing, starved = world.chat_on(0), world.chat_on(1)
    async with running(world):
        world.log.append(message(starved, 1))
        for sequence in range(1, 4):
            world.log.append(message(flowing, sequence))
            await world.until_committed(0, sequence)
            world.clock.now += BOUND / 2
        status, state, degraded, error = await world.readyz()
        assert (status, state, degraded) == (200, "degraded", ["fanout_progress"])
        assert "partition(s) 1 (45s)" in error
        assert "partition(s) 0" not in error
        assert world.consumer.failing  # no batch is failing: the stall alone starts the direct path
        world.source.held = frozenset()
        await eventually(lambda: world.committed(1) == 1)
        assert await world.readyz() == (200, "ready", [], "")
        assert not world.consumer.failing


async def test_a_partition_without_pending_records_is_never_stalled() -> None:
    world = World()
    chat = world.chat_on(0)
    async with running(world):
        world.log.append(message(chat, 1))
        await eventually(lambda: world.committed(0) == 1)
        world.clock.now += 100 * BOUND
        assert await world.consumer.stalled() == {}
        assert await world.readyz() == (200, "ready", [], "")
        assert world.stalled_gauge() == 0
        assert not world.consumer.failing


async def test_slow_but_steady_progress_is_not_a_stall() -> None:
    """Each batch (one record) takes 0.6 of the bound: the partition is pending for 3 bounds in
    all, but never goes a bound without progress."""
    world = World(max_records=1)
    chat = world.chat_on(0)
    seen: list[dict[int, float]] = []

    async def slow_read() -> None:
        world.clock.now += 0.6 * BOUND
        seen.append(await world.consumer.stalled())

    world.members.on_read = slow_read
    for sequence in range(1, 6):
        world.log.append(message(chat, sequence))
    async with running(world):
        await eventually(lambda: world.committed(0) == 5)
    assert len(seen) == 5
    assert seen == [{}] * 5


def test_the_watch_forgets_what_is_no_longer_pending_and_restarts_on_progress() -> None:
    watch = StallWatch(10.0)
    watch.observe({0, 1}, now=0.0)
    assert watch.stalled(10.0) == {}
    assert watch.stalled(11.0) == {0: 11.0, 1: 11.0}
    watch.progressed([0], now=11.0)
    assert watch.stalled(12.0) == {1: 12.0}
    watch.observe({0}, now=12.0)  # 1 caught up: forgotten
    assert watch.stalled(30.0) == {0: 19.0}
    assert watch.longest_wait(30.0) == 19.0
    watch.observe(set(), now=31.0)
    assert (watch.stalled(1000.0), watch.longest_wait(1000.0)) == ({}, 0.0)
    watch.observe({1}, now=1000.0)  # pending again: its clock starts now, not at 0
    assert watch.stalled(1005.0) == {}
    with pytest.raises(ValueError, match="positive"):
        StallWatch(0)
