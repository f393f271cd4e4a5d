"""Kafka clients: a producer (acks=all, not idempotent: see ADR 0006), a group consumer and a
readiness probe.

Explicit lifecycle in the manner of aiokafka itself: the context managers start the client and
always stop it, also when start fails half way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


@asynccontextmanager
async def open_producer(bootstrap: str, *, client_id: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        # Not idempotent: aiokafka's idempotent producer keeps a sequence gap after a batch fails
        # during a broker restart and then refuses every later batch for that partition
        # (OutOfOrderSequenceNumber) for the producer's life. Duplicates are harmless here
        # (ADR 0006: at-least-once, clients drop duplicates by sequence).
        enable_idempotence=False,
        linger_ms=2,
        request_timeout_ms=10_000,
    )
    try:
        await producer.start()
        yield producer
    finally:
        await producer.stop()


METADATA_MAX_AGE_MS = 5_000
"""The group consumer's periodic metadata refresh (aiokafka's default is 300,000)."""


@asynccontextmanager
async def open_consumer(
    bootstrap: str,
    topics: tuple[str, ...],
    *,
    group_id: str,
    client_id: str,
    auto_offset_reset: str = "earliest",
    session_timeout_ms: int = 10_000,
) -> AsyncIterator[AIOKafkaConsumer]:
    """A group consumer with auto-commit off: the caller commits after it has handed off, so
    a crash re-delivers rather than drops (at-least-once)."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        isolation_level="read_committed",
        max_poll_records=500,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(100, session_timeout_ms // 4),
        # aiokafka 0.14 retries an offset lookup (ListOffsets) that a former leader refuses
        # (NotLeaderForPartition) without refreshing metadata: after a broker partitioned from
        # the others heals, a partition's consumption stopped until the next periodic refresh
        # (5 min by default). Refreshing every 5 s bounds that stall (ADR 0037).
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
    )
    try:
        await consumer.start()
        yield consumer
    finally:
        await consumer.stop()


@asynccontextmanager
async def open_reader(bootstrap: str, *, client_id: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer without a group, for tools that assign partitions and read them: nothing
    is committed, so reading changes nothing."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, client_id=client_id, enable_auto_commit=False
    )
    try:
        await consumer.start()
        yield consumer
    finally:
        await consumer.stop()


class KafkaHealth:
    """Ready when the broker answers a metadata request within the timeout. Not critical
    (ADR 0033): without Kafka a process still takes sends and delivers directly, so ``/readyz``
    says degraded rather than unready."""

    name = "kafka"
    critical = False

    def __init__(self, producer: AIOKafkaProducer, timeout_seconds: float = 2.0) -> None:
        self._producer = producer
        self._timeout = timeout_seconds

    async def check(self) -> None:
        client = self._producer.client
        ok = await asyncio.wait_for(client.fetch_all_metadata(), self._timeout)
        if not ok or not ok.brokers():
            raise ConnectionError("Kafka answered no brokers")
