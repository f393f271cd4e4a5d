"""``EventSource`` on a Kafka consumer group spread over all app processes.

aiokafka's errors say whether retrying may work (``KafkaError.retriable``); they are translated
here into the domain's ``Unavailable`` (retriable) or ``EventLogError`` (permanent), so nothing
from aiokafka crosses the port (ADR 0022). A record that cannot be decoded is returned as
``Undecodable`` for the consumer to park: it never stalls its partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from messaging.domain.errors import MessagingError, Unavailable
from messaging.fanout.ports import EventBatch, EventLogError, EventRecord, Undecodable
from messaging.protocol.wire import decode_event

log = logging.getLogger(__name__)

T = TypeVar("T")

POSITION_SECONDS = 0.1
"""How long ``backlog`` waits for a partition's position (it has one at once after a fetch)."""


def translate(exc: Exception, doing: str) -> MessagingError:
    """A vendor error as the domain's: retriable when aiokafka says it is (or the network
    failed), permanent otherwise."""
    if (isinstance(exc, KafkaError) and exc.retriable) or isinstance(exc, OSError | TimeoutError):
        return Unavailable(f"{doing}: {exc!r}")
    return EventLogError(f"{doing}: {exc!r}")


async def _translated(call: Awaitable[T], doing: str) -> T:
    try:
        return await call
    except (KafkaError, ConsumerStoppedError, OSError, TimeoutError) as exc:
        raise translate(exc, doing) from exc


class KafkaEventSource:
    def __init__(self, consumer: AIOKafkaConsumer, *, max_records: int = 500) -> None:
        self._consumer = consumer
        self._max_records = max_records

    async def poll(self, timeout_seconds: float) -> EventBatch:
        batches = await _translated(
            self._consumer.getmany(
                timeout_ms=int(timeout_seconds * 1000), max_records=self._max_records
            ),
            "polling the event log",
        )
        records: list[EventRecord] = []
        undecodable: list[Undecodable] = []
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for partition, batch in batches.items():
            for record in batch:
                try:
                    message = decode_event(record.value)
                except (ValueError, KeyError, TypeError) as exc:
                    raw = record.value if isinstance(record.value, bytes) else b""
                    undecodable.append(
                        Undecodable(partition.partition, record.offset, raw, repr(exc))
                    )
                    continue
                records.append(EventRecord(partition.partition, record.offset, message))
            if batch:
                offsets[partition] = OffsetAndMetadata(batch[-1].offset + 1, "")
        return EventBatch(tuple(records), offsets, tuple(undecodable))

    async def commit(self, batch: EventBatch) -> None:
        offsets = batch.position
        assert isinstance(offsets, dict)
        if offsets:
            await _translated(self._consumer.commit(offsets), "committing offsets")

    async def backlog(self) -> dict[int, int]:
        behind: dict[int, int] = {}
        for partition in self._consumer.assignment():
            try:
                end = self._consumer.highwater(partition)
                if end is None:  # no fetch of it answered since it was assigned
                    continue
                # Known without a request once the consumer has a position (it has fetched);
                # bounded in case a reset is under way.
                position = await asyncio.wait_for(
                    self._consumer.position(partition), POSITION_SECONDS
                )
            except (AssertionError, KafkaError, TimeoutError):
                continue  # unassigned meanwhile, or no position now: not known
            behind[partition.partition] = max(0, end - position)
        return behind
