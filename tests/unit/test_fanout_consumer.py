"""FanoutConsumer on fakes (ADR 0022): retriable failures are retried a bounded number of times,
what can never succeed is parked as a dead letter and the partition moves on, and a failing
partition shows in readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection

import httpx
import pytest
from aiokafka.errors import CommitFailedError, KafkaConnectionError, RequestTimedOutError
from starlette.applications import Starlette

from messaging.domain.errors import InvalidInput, Unavailable
from messaging.domain.ids import new_group_id
from messaging.domain.model import Membership
from messaging.fanout.adapters.kafka_events import translate
from messaging.fanout.consumer import FanoutConsumer
from messaging.fanout.ports import EventLogError
from messaging.fanout.service import FanoutService
from messaging.metrics import Metrics
from messaging.web import health
from tests.fakes.fanout import (
    FakeEventSource,
    InMemoryEventLog,
    Local,
    NoHandoff,
    Parked,
    RecordingDeadLetters,
    message,
)
from tests.polling import eventually

ALICE, BOB = "u_" + "a" * 32, "u_" + "b" * 32


class Members:
    """Memberships of every chat: Alice and Bob; ``broken`` chats raise ``error``."""

    def __init__(self) -> None:
        self.broken: dict[str, Exception] = {}
        self.reads = 0

    async def active_memberships(self, chat_id: str) -> list[Membership]:
        self.reads += 1
        if chat_id in self.broken:
            raise self.broken[chat_id]
        return [Membership(chat_id=chat_id, user_id=u, joined_seq=0) for u in (ALICE, BOB)]


class BobHere:
    async def lookup(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        return {"here": {BOB} & set(user_ids)}


class World:
    def __init__(self, max_attempts: int = 3, reorder_window_seconds: float = 0.0) -> None:
        self.log = InMemoryEventLog(partitions=1)
        self.source = FakeEventSource(self.log)
        self.members = Members()
        self.local = Local()
        self.letters = RecordingDeadLetters()
        self.metrics = Metrics()
        self.sleeps: list[float] = []
        self.consumer = FanoutConsumer(
            self.source,
            FanoutService(
                self.members,
                BobHere(),
                NoHandoff(),
                self.local,
                instance_id="here",
                metrics=self.metrics,
            ),
            self.letters,
            self.metrics,
            max_attempts=max_attempts,
            max_backoff_seconds=0.4,
            first_backoff_seconds=0.1,
            poll_seconds=0.01,
            reorder_window_seconds=reorder_window_seconds,
            sleep=self.sleep,
        )

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)

    def delivered(self) -> list[tuple[str, int]]:
        return [(d.message.chat_id, d.message.sequence) for d in self.local.deliveries]

    def committed(self) -> int:
        return self.log.committed.get(("fanout", 0), 0)

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def running(world: World) -> AsyncIterator[None]:
    task = asyncio.create_task(world.consumer.run())
    try:
        yield
    finally:
        async with asyncio.timeout(5):
            await world.consumer.stop()
        await task


async def test_a_batch_that_always_fails_is_parked_after_the_bound_and_the_partition_moves_on() -> (
    None
):
    world = World(max_attempts=3)
    stuck, fine = new_group_id(), new_group_id()
    world.members.broken[stuck] = Unavailable("the store is away")
    world.log.append(message(stuck, 1))
    world.log.append(message(stuck, 2))
    async with running(world):
        await eventually(lambda: world.committed() == 2)
        assert [(p.record, p.partition, p.offset) for p in world.letters.parked] == [
            (message(stuck, 1), 0, 0),
            (message(stuck, 2), 0, 1),
        ]
        assert "failed 3 times" in world.letters.parked[0].reason
        assert world.sleeps == [0.1, 0.2]  # backoff between the 3 attempts, doubling
        world.log.append(message(fine, 1))  # the partition moves on
        await eventually(lambda: world.committed() == 3)
        assert world.delivered() == [(fine, 1)]
        await world.consumer.check()  # ready again
    assert world.sample("messaging_fanout_failures_total", kind="retriable") == 3
    assert world.sample("messaging_fanout_dead_letters_total", cause="exhausted") == 2


async def test_a_permanent_failure_parks_only_the_records_that_fail_alone() -> None:
    world = World(max_attempts=5)
    poison, fine = new_group_id(), new_group_id()
    world.members.broken[poison] = InvalidInput("not a chat this version can read")
    for chat, seq in ((fine, 1), (poison, 1), (fine, 2)):
        world.log.append(message(chat, seq))
    async with running(world):
        await eventually(lambda: world.committed() == 3)
    assert world.delivered() == [(fine, 1), (fine, 2)]
    assert [p.offset for p in world.letters.parked] == [1]
    assert "InvalidInput" in world.letters.parked[0].reason
    assert world.sleeps == []  # nothing retried that cannot succeed
    assert world.sample("messaging_fanout_dead_letters_total", cause="permanent") == 1


async def test_an_undecodable_record_is_parked_and_does_not_stall_the_partition() -> None:
    world = World()
    chat = new_group_id()
    world.log.append_raw(0, b"{not json")
    world.log.append(message(chat, 1))
    async with running(world):
        await eventually(lambda: world.committed() == 2)
    assert world.letters.parked[0].record == b"{not json"
    assert world.letters.parked[0].reason.startswith("undecodable")
    assert world.delivered() == [(chat, 1)]
    assert world.sample("messaging_fanout_dead_letters_total", cause="undecodable") == 1


async def test_a_retriable_failure_that_clears_is_delivered_without_dead_letters() -> None:
    world = World(max_attempts=10)
    chat = new_group_id()
    world.members.broken[chat] = Unavailable("blip")
    world.log.append(message(chat, 1))
    async with running(world):
        await eventually(lambda: len(world.sleeps) >= 2)
        del world.members.broken[chat]
        await eventually(lambda: world.committed() == 1)
    assert world.delivered() == [(chat, 1)]
    assert world.letters.parked == []


async def test_readiness_and_metrics_name_a_failing_partition_while_it_is_retried() -> None:
    world = World(max_attempts=1000)
    chat = new_group_id()
    world.members.broken[chat] = Unavailable("the store is away")
    world.log.append(message(chat, 1))
    app = Starlette(routes=health.routes(lambda _: [world.consumer]))
    transport = httpx.ASGITransport(app=app)
    async with running(world), httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        await eventually(lambda: len(world.sleeps) >= 3)
        answer = await http.get("/readyz")
        # ADR 0033: a failing fanout degrades freshness, not readiness.
        assert answer.status_code == 200
        body = answer.json()
        assert body["status"] == "degraded"
        assert (body["failing"], body["degraded"]) == ([], ["fanout"])
        assert world.consumer.failing
        assert "partition(s) 0 failing" in body["checks"]["fanout"]["error"]
        assert "store is away" in body["checks"]["fanout"]["error"]
        assert world.committed() == 0
        assert world.sample("messaging_fanout_failures_total", kind="retriable") >= 3
        del world.members.broken[chat]
        await eventually(lambda: world.committed() == 1)
        answer = await http.get("/readyz")
        assert (answer.status_code, answer.json()["status"]) == (200, "ready")
        assert not world.consumer.failing


async def test_stopping_during_retries_leaves_the_batch_uncommitted() -> None:
    world = World(max_attempts=1000)
    chat = new_group_id()
    world.members.broken[chat] = Unavailable("away")
    world.log.append(message(chat, 1))
    async with running(world):
        await eventually(lambda: len(world.sleeps) >= 2)
    assert world.committed() == 0  # the next owner of the partition re-delivers it
    assert world.letters.parked == []


async def test_a_failing_dead_letter_store_holds_the_partition_until_it_parks() -> None:
    world = World(max_attempts=1)
    chat = new_group_id()
    world.members.broken[chat] = InvalidInput("poison")
    world.letters.fail = True
    world.log.append(message(chat, 1))
    async with running(world):
        await eventually(
            lambda: world.sample("messaging_fanout_failures_total", kind="dead_letter") >= 2
        )
        assert world.committed() == 0
        with pytest.raises(RuntimeError, match="partition"):
            await world.consumer.check()
        world.letters.fail = False
        await eventually(lambda: world.committed() == 1)
    assert world.letters.parked == [Parked(message(chat, 1), 0, 0, world.letters.parked[0].reason)]


async def test_a_failing_poll_is_retried_and_reported() -> None:
    world = World()
    world.source.fail = Unavailable("the log is away")
    async with running(world):
        await eventually(lambda: len(world.sleeps) >= 2)
        with pytest.raises(RuntimeError, match="polling the event log fails"):
            await world.consumer.check()
        world.source.fail = None
        await eventually(lambda: world.sample("messaging_fanout_seconds_since_progress") < 1)
        await eventually(lambda: not world.consumer._poll_error)
        await world.consumer.check()
    assert world.sample("messaging_fanout_failures_total", kind="poll") >= 2


def test_kafka_errors_are_translated_by_their_retriable_flag() -> None:
    retriable = translate(KafkaConnectionError("down"), "polling")
    assert isinstance(retriable, Unavailable)
    assert retriable.retriable
    assert translate(RequestTimedOutError(), "polling").retriable
    permanent = translate(CommitFailedError("rebalanced"), "committing")
    assert isinstance(permanent, EventLogError)
    assert not permanent.retriable
    assert translate(ConnectionResetError(), "polling").retriable


async def test_the_reorder_window_fans_a_late_predecessor_out_first() -> None:
    world = World(reorder_window_seconds=5.0)
    chat = new_group_id()
    world.log.append(message(chat, 1))
    world.log.append(message(chat, 3))
    async with running(world):
        await eventually(lambda: world.committed() == 2)
        assert world.delivered() == [(chat, 1)]  # 3 waits for 2 (committed all the same)
        world.log.append(message(chat, 2))
        await eventually(lambda: len(world.delivered()) == 3)
        assert world.delivered() == [(chat, 1), (chat, 2), (chat, 3)]
    assert world.sample("messaging_fanout_reorder_holds_total") == 1
    assert world.sample("messaging_fanout_reorder_expired_total") == 0


async def test_the_reorder_window_gives_up_on_a_hole_after_the_window_without_new_records() -> None:
    world = World(reorder_window_seconds=0.05)
    chat = new_group_id()
    for sequence in (1, 3, 4):
        world.log.append(message(chat, sequence))
    async with running(world):
        await eventually(lambda: len(world.delivered()) == 3, seconds=1.0)
        assert world.delivered() == [(chat, 1), (chat, 3), (chat, 4)]
        assert world.sample("messaging_fanout_reorder_held_records") == 0
    assert world.sample("messaging_fanout_reorder_expired_total") == 1


async def test_stopping_fans_out_what_the_reorder_window_holds() -> None:
    world = World(reorder_window_seconds=60.0)
    chat = new_group_id()
    world.log.append(message(chat, 1))
    world.log.append(message(chat, 3))
    async with running(world):
        await eventually(lambda: world.committed() == 2)
        assert world.delivered() == [(chat, 1)]
    assert world.delivered() == [(chat, 1), (chat, 3)]


async def test_a_hold_expires_while_the_log_cannot_be_polled() -> None:
    world = World(reorder_window_seconds=0.05)
    chat = new_group_id()
    world.log.append(message(chat, 1))
    world.log.append(message(chat, 3))
    async with running(world):
        await eventually(lambda: world.committed() == 2)
        world.source.fail = KafkaConnectionError()
        await eventually(lambda: len(world.delivered()) == 2, seconds=1.0)
        assert world.delivered() == [(chat, 1), (chat, 3)]
        world.source.fail = None
