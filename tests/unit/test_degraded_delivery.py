"""ADR 0033: live delivery that needs neither Redis nor Kafka for this process's own sockets,
no frame queued twice to a connection, and readiness that tells "cannot serve" from "serves
degraded"."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence

import httpx
import pytest
from starlette.applications import Starlette

from messaging.bootstrap import build_services
from messaging.connection.outbound import OutboundQueue
from messaging.connection.registry import LocalConnections
from messaging.connection.session import Connection
from messaging.domain.errors import Unavailable
from messaging.domain.ids import new_group_id
from messaging.domain.model import Membership, Message
from messaging.durability.outbox import OutboxRelay
from messaging.fanout.direct import DirectFanout
from messaging.fanout.service import FanoutService
from messaging.metrics import Metrics
from messaging.protocol import frames
from messaging.protocol.delivery import Delivery, RouteLookup
from messaging.protocol.faults import NoFaults
from messaging.settings import Settings
from messaging.web import health
from tests.fakes.durability import InMemoryMessageStore, InMemoryOutbox, RecordingPublisher
from tests.fakes.fanout import FakeRoutes
from tests.polling import eventually
from tests.unit.test_fanout_service import ALICE, BOB, CAROL, Local, Members, message
from tests.unit.test_graph_on_fakes import Fakes


class Sent:
    def __init__(self) -> None:
        self.frames: list[str] = []

    async def __call__(self, text: str) -> None:
        self.frames.append(text)


def connection(user: str, sent: Sent, metrics: Metrics) -> Connection:
    return Connection(user, "d", OutboundQueue(100, 1 << 20), metrics, sent)


def sequences(sent: Sent) -> list[int]:
    out = []
    for text in sent.frames:
        frame = frames.decode_server_frame(text)
        assert isinstance(frame, frames.MessageFrame)
        out.append(frame.sequence)
    return out


async def test_a_message_is_queued_once_per_connection_however_often_it_is_delivered() -> None:
    metrics = Metrics()
    local = LocalConnections(metrics)
    first, second = Sent(), Sent()
    local.add(connection(ALICE, first, metrics))
    chat = new_group_id()
    one, two = Delivery(message(chat, 1), (ALICE,)), Delivery(message(chat, 2), (ALICE,))
    assert local.deliver([one]) == 1
    assert local.deliver([one, two]) == 1  # the direct path, then the log: one frame each
    local.add(connection(ALICE, second, metrics))  # a new connection is queued it again
    assert local.deliver([one]) == 1
    await asyncio.sleep(0.01)
    assert (sequences(first), sequences(second)) == ([1, 2], [1])
    skipped = metrics.registry.get_sample_value("messaging_fanout_duplicates_skipped_total")
    assert skipped == 2


class RoutesAway:
    async def lookup(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        raise Unavailable("routing lookup failed: Redis is away")


class NoHandoff:
    async def send(self, instance_id: str, deliveries: Sequence[Delivery]) -> None:
        raise AssertionError("nothing can be handed off without the route table")


def group(members: Members, *users: str) -> str:
    chat = new_group_id()
    members.chats[chat] = [Membership(chat_id=chat, user_id=u, joined_seq=0) for u in users]
    return chat


async def test_local_sockets_are_served_when_the_route_lookup_fails() -> None:
    members, local = Members(), Local()
    service = FanoutService(
        members, RoutesAway(), NoHandoff(), local, instance_id="here", metrics=Metrics()
    )
    chat = group(members, ALICE, BOB, CAROL)
    try:
        await service.fan_out([message(chat, 1)])
    except Unavailable:
        pass
    else:
        raise AssertionError("the failed lookup must still fail the batch (it is retried)")
    assert [(d.message.sequence, d.recipients) for d in local.deliveries] == [
        (1, (ALICE, BOB, CAROL))  # LocalDelivery keeps those with a socket here
    ]


class Stalled:
    """A route table that never answers (Redis blackholed)."""

    def __init__(self) -> None:
        self.asked = 0

    async def lookup(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        self.asked += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_the_direct_path_runs_while_the_log_is_degraded_and_redis_never_holds_it_up() -> None:
    members, local = Members(), Local()
    routes: RouteLookup = OnlyHere()
    service = FanoutService(
        members, Switch(lambda: routes), NoHandoff(), local, instance_id="here", metrics=Metrics()
    )
    degraded = [False]
    direct = DirectFanout(service, lambda: degraded[0], Metrics())
    chat = group(members, ALICE, BOB)
    runner = asyncio.create_task(direct.run())
    try:
        direct.submit(message(chat, 1))  # healthy: the log delivers it, not the direct path
        degraded[0] = True
        direct.submit(message(chat, 2))
        direct.unpublished([message(chat, 3)])  # a failed publish: always
        await eventually(lambda: len(local.deliveries) == 2)
        degraded[0], routes = False, (stalled := Stalled())
        direct.unpublished([message(chat, 4)])
        await eventually(lambda: stalled.asked == 1)  # its hand-off hangs on Redis ...
        direct.unpublished([message(chat, 5)])  # ... and the local part goes on meanwhile
        await eventually(lambda: len(local.deliveries) == 4)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert [d.message.sequence for d in local.deliveries] == [2, 3, 4, 5]


class OnlyHere:
    async def lookup(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        return {"here": set(user_ids)}


class Switch:
    def __init__(self, current: Callable[[], RouteLookup]) -> None:
        self._current = current

    async def lookup(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        return await self._current().lookup(user_ids)


async def test_the_relay_says_when_publishing_fails_and_hands_on_what_it_could_not_publish() -> (
    None
):
    store = InMemoryMessageStore()
    publisher = RecordingPublisher()
    unpublished: list[Message] = []
    relay = OutboxRelay(
        store, InMemoryOutbox(store), publisher, Metrics(), on_unpublished=unpublished.extend
    )
    runner = asyncio.create_task(relay.run())
    try:
        chat = new_group_id()
        publisher.fail = True
        relay.submit(message(chat, 1))
        await eventually(lambda: relay.publishing_fails)
        assert [m.sequence for m in unpublished] == [1]
        publisher.fail = False
        relay.submit(message(chat, 2))
        await eventually(lambda: not relay.publishing_fails)
        assert [m.sequence for m in unpublished] == [1]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


class Check:
    def __init__(self, name: str, *, critical: bool, ok: bool = True) -> None:
        self.name, self.critical, self.ok = name, critical, ok

    async def check(self) -> None:
        if not self.ok:
            raise ConnectionError(f"{self.name} is away")


async def test_readyz_tells_cannot_serve_from_serves_degraded() -> None:
    kafka, store = Check("kafka", critical=False), Check("dynamodb", critical=True)
    app = Starlette(routes=health.routes(lambda _: [kafka, store]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as h:

        async def ready() -> tuple[int, str, list[str], list[str]]:
            answer = await h.get("/readyz")
            body = answer.json()
            return answer.status_code, body["status"], body["failing"], body["degraded"]

        assert await ready() == (200, "ready", [], [])
        kafka.ok = False
        assert await ready() == (200, "degraded", [], ["kafka"])
        store.ok = False
        assert await ready() == (503, "unavailable", ["dynamodb"], ["kafka"])


async def test_a_message_a_sync_replayed_is_not_queued_live_again() -> None:
    metrics = Metrics()
    local = LocalConnections(metrics)
    sent = Sent()
    conn = connection(ALICE, sent, metrics)
    local.add(conn)
    chat = new_group_id()
    local.replayed(conn, chat, 1)  # what SyncReplay tells it
    assert (
        local.deliver([Delivery(message(chat, 1), (ALICE,)), Delivery(message(chat, 2), (ALICE,))])
        == 1
    )
    await asyncio.sleep(0.01)
    assert sequences(sent) == [2]


async def test_the_direct_path_runs_while_routing_fails_whatever_the_consumer_does() -> None:
    """A process cut from Redis serves its own sockets even when its fanout consumer holds
    no busy partition (so never stalls): failing routing alone turns the direct path on."""
    fakes = Fakes()
    settings = Settings(env="test", instance_id="cut-1", otp_sender="dev")
    metrics = Metrics()
    local = LocalConnections(metrics)
    async with fakes.adapters(settings, metrics, local) as adapters:
        services = build_services(settings, adapters, local, metrics, NoFaults())
        routes = adapters.routes
        assert isinstance(routes, FakeRoutes)
        await routes.refresh_once()
        assert not services.direct.active
        routes.fail = True
        with pytest.raises(Unavailable):
            await routes.refresh_once()
        assert services.direct.active
        assert not services.fanout.failing
        assert not services.relay.publishing_fails
        routes.fail = False
        await routes.refresh_once()
        assert not services.direct.active
