"""Building each fanout port for a contract target: the in-memory fake, and the real adapter
on the shared local stack (Redis on its port; Kafka on a topic and group private to the run)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import attrs
from aiokafka import AIOKafkaProducer, TopicPartition
from redis.asyncio import Redis

from messaging.devstack.services import kafka_create_topics
from messaging.domain.model import Message
from messaging.fanout.adapters.kafka_dead_letters import KafkaDeadLetters, KafkaDeadLetterTopic
from messaging.fanout.adapters.kafka_events import KafkaEventSource
from messaging.fanout.adapters.redis_handoff import RedisHandoff
from messaging.fanout.adapters.redis_routing import RedisRoutes
from messaging.fanout.ports import EventSource, Handoff, RouteTable
from messaging.infra.kafka import open_consumer, open_producer, open_reader
from messaging.infra.redis import open_redis
from messaging.protocol.wire import decode_event, encode_event
from messaging.settings import from_env
from tests.fakes.fanout import (
    FakeEventSource,
    FakeHandoff,
    FakeRoutes,
    HandoffBus,
    InMemoryEventLog,
    RouteServer,
)

LOG_TARGETS = ["fake", "kafka"]
REDIS_TARGETS = ["fake", "redis"]
PARTITIONS = 2


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ event log


class LogTarget(Protocol):
    """A private topic: ``produce`` appends, ``source`` opens a consumer of a group (taking
    at most ``max_records`` per poll)."""

    async def produce(self, messages: Sequence[Message]) -> None: ...

    async def produce_raw(self, partition: int, value: bytes) -> None: ...

    def source(
        self, group: str, max_records: int = 500
    ) -> AbstractAsyncContextManager[EventSource]: ...


class FakeLogTarget:
    def __init__(self) -> None:
        self.log = InMemoryEventLog(PARTITIONS)

    async def produce(self, messages: Sequence[Message]) -> None:
        for message in messages:
            self.log.append(message)

    async def produce_raw(self, partition: int, value: bytes) -> None:
        self.log.append_raw(partition, value)

    @asynccontextmanager
    async def source(self, group: str, max_records: int = 500) -> AsyncIterator[EventSource]:
        yield FakeEventSource(self.log, group, max_records=max_records)


@attrs.define
class KafkaLogTarget:
    bootstrap: str
    topic: str
    producer: AIOKafkaProducer

    async def produce(self, messages: Sequence[Message]) -> None:
        for message in messages:
            await self.producer.send_and_wait(
                self.topic, encode_event(message), key=message.chat_id.encode()
            )

    async def produce_raw(self, partition: int, value: bytes) -> None:
        await self.producer.send_and_wait(self.topic, value, partition=partition)

    @asynccontextmanager
    async def source(self, group: str, max_records: int = 500) -> AsyncIterator[EventSource]:
        async with open_consumer(
            self.bootstrap,
            (self.topic,),
            group_id=f"{self.topic}-{group}",
            client_id="contract",
            session_timeout_ms=3000,
        ) as consumer:
            yield KafkaEventSource(consumer, max_records=max_records)


@asynccontextmanager
async def open_log(target: str) -> AsyncIterator[LogTarget]:
    if target == "fake":
        yield FakeLogTarget()
        return
    settings = from_env()
    topic = f"contract-fanout-{uuid.uuid4().hex[:8]}"
    await kafka_create_topics(settings.kafka_bootstrap, {topic: PARTITIONS})
    async with open_producer(settings.kafka_bootstrap, client_id="contract") as producer:
        yield KafkaLogTarget(settings.kafka_bootstrap, topic, producer)


# ------------------------------------------------------------------ dead letters


@attrs.define
class DeadLetterTarget:
    """A private messages topic and its dead-letter topic on the stack's Kafka."""

    letters: KafkaDeadLetters
    topic: KafkaDeadLetterTopic
    bootstrap: str
    messages_topic: str

    async def republished(self) -> list[tuple[bytes | None, Message]]:
        """(key, message) of every record on the messages topic, in order."""
        async with open_reader(self.bootstrap, client_id="contract") as consumer:
            partition = TopicPartition(self.messages_topic, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            end = (await consumer.end_offsets([partition]))[partition]
            found: list[tuple[bytes | None, Message]] = []
            while await consumer.position(partition) < end:
                batch = await consumer.getmany(partition, timeout_ms=1000)
                for record in batch.get(partition, []):
                    assert record.value is not None
                    found.append((record.key, decode_event(record.value)))
            return found


@asynccontextmanager
async def open_dead_letter_target() -> AsyncIterator[DeadLetterTarget]:
    settings = from_env()
    messages = f"contract-fanout-{uuid.uuid4().hex[:8]}"
    dlq = f"{messages}.dlq"
    await kafka_create_topics(settings.kafka_bootstrap, {messages: 1, dlq: 1})
    async with (
        open_producer(settings.kafka_bootstrap, client_id="contract") as producer,
        open_reader(settings.kafka_bootstrap, client_id="contract") as consumer,
    ):
        yield DeadLetterTarget(
            KafkaDeadLetters(producer, dlq),
            KafkaDeadLetterTopic(consumer, producer, dlq, messages),
            settings.kafka_bootstrap,
            messages,
        )


# ------------------------------------------------------------------ Redis-backed ports


@attrs.define
class RedisTarget:
    """Builds route tables and hand-off ends sharing one server (fake or the stack's Redis)."""

    kind: str
    redis: Redis | None = None
    server: RouteServer = attrs.Factory(RouteServer)
    bus: HandoffBus = attrs.Factory(HandoffBus)

    def routes(
        self,
        instance_id: str,
        *,
        ttl_seconds: int = 30,
        on_lost: Callable[[str], None] = lambda _: None,
        clock: Callable[[], float] = time.time,
    ) -> RouteTable:
        if self.redis is None:
            return FakeRoutes(
                self.server, instance_id, ttl_seconds=ttl_seconds, on_lost=on_lost, clock=clock
            )
        return RedisRoutes(
            self.redis, instance_id, ttl_seconds=ttl_seconds, on_lost=on_lost, clock=clock
        )

    def handoff(self, instance_id: str) -> RedisHandoff | FakeHandoff:
        if self.redis is None:
            return FakeHandoff(self.bus, instance_id)
        return RedisHandoff(self.redis, instance_id)

    async def lose_state(self, instance_id: str) -> None:
        """What a flush or restart of Redis does to this instance (only its own keys)."""
        if self.redis is None:
            self.server.forget(instance_id)
            return
        keys = [key async for key in self.redis.scan_iter("route:*")]
        for key in keys:
            await self.redis.zrem(key, instance_id)
        await self.redis.delete(f"instance:{instance_id}")


@asynccontextmanager
async def open_redis_target(target: str) -> AsyncIterator[RedisTarget]:
    if target == "fake":
        yield RedisTarget("fake")
        return
    async with open_redis(from_env().redis_url) as redis:
        yield RedisTarget("redis", redis)


@asynccontextmanager
async def broken_routes_and_handoff(target: str) -> AsyncIterator[tuple[RouteTable, Handoff]]:
    """A route table and hand-off whose server is away."""
    if target == "fake":
        routes, handoff = FakeRoutes(RouteServer(), "broken"), FakeHandoff(HandoffBus(), "b")
        routes.fail = handoff.fail = True
        yield routes, handoff
        return
    async with open_redis(f"redis://127.0.0.1:{_dead_port()}/0") as redis:
        yield (
            RedisRoutes(redis, "broken", ttl_seconds=30, on_lost=lambda _: None),
            RedisHandoff(redis, "broken"),
        )
