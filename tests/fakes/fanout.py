"""In-memory fanout ports: the same contracts as the Kafka and Redis adapters
(tests/contract/test_fanout_ports.py runs one suite against both; ADR 0022).

``InMemoryEventLog`` plays the topic and the consumer group's committed offsets;
``RouteServer`` and ``HandoffBus`` play the Redis shared by every process. A ``fail`` attribute
makes an operation raise what the real adapter raises when its service is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Sequence

import attrs

from messaging.domain.errors import Unavailable
from messaging.domain.model import Message
from messaging.fanout.adapters.redis_routing import (
    LAPSE_MARGIN_SECONDS,
    RETRY_SECONDS,
    STALLED_SECONDS,
)
from messaging.fanout.ports import EventBatch, EventRecord, Undecodable
from messaging.protocol.delivery import Delivery, LocalDelivery
from messaging.protocol.wire import decode_event, encode_event

# ------------------------------------------------------------------ event log


class InMemoryEventLog:
    """A topic of ``partitions`` partitions; records of one chat go to one partition."""

    def __init__(self, partitions: int = 2) -> None:
        self.partitions: list[list[bytes]] = [[] for _ in range(partitions)]
        self.committed: dict[tuple[str, int], int] = {}
        self._appended = asyncio.Event()

    def partition_of(self, chat_id: str) -> int:
        return zlib.crc32(chat_id.encode()) % len(self.partitions)

    def append(self, message: Message) -> None:
        self.append_raw(self.partition_of(message.chat_id), encode_event(message))

    def append_raw(self, partition: int, value: bytes) -> None:
        self.partitions[partition].append(value)
        self._appended.set()

    async def wait_appended(self, timeout_seconds: float) -> None:
        self._appended.clear()
        try:
            async with asyncio.timeout(timeout_seconds):
                await self._appended.wait()
        except TimeoutError:
            pass


class EventLogPublisher:
    """Durability's ``MessagePublisher`` writing to an :class:`InMemoryEventLog`."""

    def __init__(self, log: InMemoryEventLog) -> None:
        self.log = log

    async def publish(self, messages: Sequence[Message]) -> None:
        for message in messages:
            self.log.append(message)


class FakeEventSource:
    """One consumer of a group on an :class:`InMemoryEventLog`, from the group's committed
    offsets, owning the ``assigned`` partitions (all by default). ``fail`` (an exception) makes
    ``poll`` raise it; ``held`` partitions' records are not returned by ``poll`` (a fetch that
    makes no progress), though ``backlog`` counts them."""

    def __init__(
        self,
        log: InMemoryEventLog,
        group: str = "fanout",
        max_records: int = 500,
        assigned: Collection[int] | None = None,
    ) -> None:
        self.log = log
        self.group = group
        self.max_records = max_records
        self.assigned = frozenset(range(len(log.partitions)) if assigned is None else assigned)
        self.position = [log.committed.get((group, p), 0) for p in range(len(log.partitions))]
        self.fail: Exception | None = None
        self.held: frozenset[int] = frozenset()

    def _pending(self) -> bool:
        return any(
            len(self.log.partitions[p]) > self.position[p] for p in self.assigned - self.held
        )

    async def poll(self, timeout_seconds: float) -> EventBatch:
        if self.fail is not None:
            raise self.fail
        if not self._pending():
            await self.log.wait_appended(timeout_seconds)
        records: list[EventRecord] = []
        undecodable: list[Undecodable] = []
        ends: dict[int, int] = {}
        budget = self.max_records
        for partition in sorted(self.assigned - self.held):
            values = self.log.partitions[partition]
            start = self.position[partition]
            taken = values[start : start + budget]
            for offset, value in enumerate(taken, start):
                try:
                    records.append(EventRecord(partition, offset, decode_event(value)))
                except (ValueError, KeyError, TypeError) as exc:
                    undecodable.append(Undecodable(partition, offset, value, repr(exc)))
            if taken:
                ends[partition] = start + len(taken)
                self.position[partition] = start + len(taken)
                budget -= len(taken)
        return EventBatch(tuple(records), ends, tuple(undecodable))

    async def commit(self, batch: EventBatch) -> None:
        ends = batch.position
        assert isinstance(ends, dict)
        for partition, end in ends.items():
            self.log.committed[(self.group, partition)] = end

    async def backlog(self) -> dict[int, int]:
        return {p: len(self.log.partitions[p]) - self.position[p] for p in self.assigned}


# ------------------------------------------------------------------ routes


@attrs.define
class RouteServer:
    """The shared route table: user -> instance -> expiry (ms), and each instance's marker."""

    routes: dict[str, dict[str, int]] = attrs.Factory(dict)
    markers: dict[str, tuple[str, int]] = attrs.Factory(dict)

    def forget(self, instance_id: str) -> None:
        """What a Redis flush does to one instance's state."""
        self.markers.pop(instance_id, None)
        for entries in self.routes.values():
            entries.pop(instance_id, None)


class FakeRoutes:
    """``RouteTable`` on a :class:`RouteServer`, with ``RedisRoutes``' semantics."""

    name = "routing"

    def __init__(
        self,
        server: RouteServer,
        instance_id: str,
        *,
        ttl_seconds: int = 30,
        on_lost: Callable[[str], None] = lambda _: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = server
        self._instance = instance_id
        self._ttl = ttl_seconds
        self._on_lost = on_lost
        self._clock = clock
        self._users: Counter[str] = Counter()
        self._token = uuid.uuid4().hex
        self._written = False
        self.duplicate_of: str | None = None
        self.fail = False
        self._failing = False
        self._valid_until: float | None = None
        self._lapsed = False

    def _expiry_ms(self) -> int:
        return int((self._clock() + self._ttl) * 1000)

    @property
    def degraded(self) -> bool:
        return self._failing

    def _failed(self, what: str) -> Unavailable:
        self._failing = self._lapsed = True
        return Unavailable(f"routing {what} failed: the route server is away")

    def _call(self, started: float) -> None:
        if self._clock() - started > STALLED_SECONDS:
            self._lapsed = True

    async def announce(self, user_id: str) -> None:
        self._users[user_id] += 1
        if self._users[user_id] == 1 and not self.fail:
            self.server.routes.setdefault(user_id, {})[self._instance] = self._expiry_ms()

    async def withdraw(self, user_id: str) -> None:
        self._users[user_id] -= 1
        if self._users[user_id] > 0:
            return
        del self._users[user_id]
        if not self.fail:
            self.server.routes.get(user_id, {}).pop(self._instance, None)

    async def lookup(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        if self.fail:
            raise self._failed("lookup")
        self._failing = False
        now_ms = int(self._clock() * 1000)
        self._call(self._clock())
        where: dict[str, set[str]] = {}
        for user in user_ids:
            for instance, expiry in self.server.routes.get(user, {}).items():
                if expiry >= now_ms:
                    where.setdefault(instance, set()).add(user)
        return where

    async def refresh_once(self) -> None:
        expiry = self._expiry_ms()
        started = self._clock()
        if self.fail:
            raise self._failed("refresh")
        self._call(started)
        self._failing = False
        now = self._clock()
        if self._valid_until is not None and now > self._valid_until - LAPSE_MARGIN_SECONDS:
            self._lapsed = True
        self._valid_until = expiry / 1000
        now_ms = int(now * 1000)
        marker = self.server.markers.get(self._instance)
        previous = marker[0] if marker is not None and marker[1] > now_ms else None
        self.server.markers[self._instance] = (self._token, now_ms + self._ttl * 1000)
        for user in self._users:
            self.server.routes.setdefault(user, {})[self._instance] = expiry
        first_write, self._written = not self._written, True
        if previous is not None and previous != self._token and not first_write:
            self.duplicate_of = previous
        if previous is None and self._users:
            self._lapsed = True
        interval = max(0.5, self._ttl / 3)
        fresh = self._valid_until - self._clock() > interval + LAPSE_MARGIN_SECONDS
        if self._lapsed and fresh:
            self._lapsed = False
            self._on_lost("routing_lost")

    async def check(self) -> None:
        if self.duplicate_of is not None:
            raise RuntimeError(f"instance id {self._instance} is used by another process too")

    async def run(self) -> None:
        interval = max(0.5, self._ttl / 3)
        while True:
            with contextlib.suppress(Unavailable):
                await self.refresh_once()
            await asyncio.sleep(min(RETRY_SECONDS, interval) if self._lapsed else interval)

    async def clear(self) -> None:
        if not self.fail:
            for user in self._users:
                self.server.routes.get(user, {}).pop(self._instance, None)
            self.server.markers.pop(self._instance, None)
        self._users.clear()


# ------------------------------------------------------------------ hand-off


@attrs.define
class HandoffBus:
    """Every process's hand-off channel: at most once, like Redis pub/sub."""

    listeners: dict[str, LocalDelivery] = attrs.Factory(dict)


class FakeHandoff:
    """``Handoff`` and ``HandoffReceiver`` on a :class:`HandoffBus`."""

    def __init__(self, bus: HandoffBus, instance_id: str) -> None:
        self.bus = bus
        self._instance = instance_id
        self._subscribed = asyncio.Event()
        self.fail = False

    async def send(self, instance_id: str, deliveries: Sequence[Delivery]) -> None:
        if self.fail:
            raise Unavailable(f"hand-off to {instance_id} failed: the bus is away")
        listener = self.bus.listeners.get(instance_id)
        if listener is not None:
            listener.deliver(list(deliveries))

    async def run_subscriber(self, local: LocalDelivery) -> None:
        self.bus.listeners[self._instance] = local
        self._subscribed.set()
        try:
            await asyncio.Event().wait()
        finally:
            self._subscribed.clear()
            if self.bus.listeners.get(self._instance) is local:
                del self.bus.listeners[self._instance]

    async def subscribed(self) -> None:
        await self._subscribed.wait()


# ------------------------------------------------------------------ dead letters


@attrs.frozen
class Parked:
    record: Message | bytes
    partition: int
    offset: int
    reason: str


class RecordingDeadLetters:
    """``DeadLetters`` that keeps what it was given; ``fail`` makes ``park`` raise."""

    def __init__(self) -> None:
        self.parked: list[Parked] = []
        self.fail = False

    async def park(self, record: Message | bytes, partition: int, offset: int, reason: str) -> None:
        if self.fail:
            raise Unavailable("the dead-letter store is away")
        self.parked.append(Parked(record, partition, offset, reason))


class Local:
    """Local delivery that records what it was given."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []

    def deliver(self, deliveries: Sequence[Delivery]) -> int:
        self.deliveries.extend(deliveries)
        return len(deliveries)

    def suggest_resync(self, reason: str) -> None:
        return None


class NoHandoff:
    """A hand-off that must not be used: every recipient is local."""

    async def send(self, instance_id: str, deliveries: Sequence[Delivery]) -> None:
        raise AssertionError("everyone is local")


def message(chat_id: str, sequence: int, sender_id: str = "u_" + "a" * 32) -> Message:
    """A message of ``chat_id`` at ``sequence`` (from Alice unless told)."""
    return Message(
        chat_id=chat_id,
        sequence=sequence,
        sender_id=sender_id,
        sender_device="d",
        client_message_id=f"m{sequence}",
        text="hi",
        created_at_ms=0,
    )
