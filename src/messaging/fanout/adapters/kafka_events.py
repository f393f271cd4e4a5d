"""``EventSource`` on a Kafka consumer group spread over all app processes."""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from messaging.domain.model import Message
from messaging.fanout.ports import EventBatch
from messaging.protocol.wire import decode_event

log = logging.getLogger(__name__)


class KafkaEventSource:
    def __init__(self, consumer: AIOKafkaConsumer, *, max_records: int = 500) -> None:
        self._consumer = consumer
        self._max_records = max_records

    async def poll(self, timeout_seconds: float) -> EventBatch:
        records = await self._consumer.getmany(
            timeout_ms=int(timeout_seconds * 1000), max_records=self._max_records
        )
        messages: list[Message] = []
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for partition, batch in records.items():
            for record in batch:
                try:
                    messages.append(decode_event(record.value))
                except (ValueError, KeyError, TypeError):
                    # A record this version cannot read: skip it rather than stall the
                    # partition; the message is in the database and clients sync it.
                    log.error("skipping undecodable record %s@%d", partition, record.offset)
            if batch:
                offsets[partition] = OffsetAndMetadata(batch[-1].offset + 1, "")
        return EventBatch(messages=tuple(messages), position=offsets)

    async def commit(self, batch: EventBatch) -> None:
        offsets = batch.position
        assert isinstance(offsets, dict)
        if offsets:
            await self._consumer.commit(offsets)

    def lag(self) -> int:
        total = 0
        for partition in self._consumer.assignment():
            end = self._consumer.highwater(partition)
            if end is None:
                continue
            try:
                position = self._consumer.last_position(partition)
            except Exception:
                continue
            if position is not None:
                total += max(0, end - position)
        return total
