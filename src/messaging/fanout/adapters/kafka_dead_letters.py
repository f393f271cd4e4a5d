"""``DeadLetters`` on a Kafka topic, ``<messages topic>.dlq`` (ADR 0030), and the operator's end
of it (``messaging dlq list|replay``).

A parked record keeps its bytes as the record value (the encoded event, or whatever undecodable
bytes were on the messages topic) and its key (the chat id, when it has one); where it came from,
why and when are headers: ``dlq.partition``, ``dlq.offset``, ``dlq.reason``, ``dlq.parked_at_ms``.
The topic has one partition, so an offset names one dead letter. Producing goes through the
app's producer (``acks=all``); a failure is the domain's retriable ``Unavailable``, which the
consumer retries (a record is never skipped unrecorded, ADR 0022).

Replaying re-publishes a decodable dead letter's message to the messages topic keyed by its chat,
where the fanout takes it like any other record (a duplicate delivery is harmless: clients drop
it by sequence); an undecodable one is reported and left where it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from messaging.domain.errors import Unavailable
from messaging.domain.model import Message
from messaging.fanout.ports import DeadLetter, Replayed
from messaging.protocol.wire import decode_event, encode_event

log = logging.getLogger(__name__)

HEADER_PARTITION = "dlq.partition"
HEADER_OFFSET = "dlq.offset"
HEADER_REASON = "dlq.reason"
HEADER_PARKED_AT = "dlq.parked_at_ms"
REASON_BYTES = 1000
"""A reason is cut to this many bytes (an exception's text can be long)."""


class KafkaDeadLetters:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._clock = clock

    async def park(self, record: Message | bytes, partition: int, offset: int, reason: str) -> None:
        if isinstance(record, Message):
            value, key = encode_event(record), record.chat_id.encode()
            what = f"message {record.chat_id}#{record.sequence}"
        else:
            value, key = record, None
            what = f"undecodable record ({len(record)} bytes: {record[:64]!r})"
        headers = [
            (HEADER_PARTITION, str(partition).encode()),
            (HEADER_OFFSET, str(offset).encode()),
            (HEADER_REASON, reason.encode()[:REASON_BYTES]),
            (HEADER_PARKED_AT, str(int(self._clock() * 1000)).encode()),
        ]
        try:
            sent = await self._producer.send_and_wait(self._topic, value, key=key, headers=headers)
        except KafkaError as exc:
            raise Unavailable(f"parking a dead letter in {self._topic}: {exc!r}") from exc
        log.error(
            "dead letter %s@%d (from partition %d offset %d): %s: %s",
            self._topic,
            sent.offset,
            partition,
            offset,
            what,
            reason,
        )


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> str:
    for key, value in headers:
        if key == name:
            return value.decode(errors="replace")
    return ""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1


def dead_letter(
    offset: int, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> DeadLetter:
    raw = value or b""
    try:
        message: Message | None = decode_event(raw)
    except (ValueError, KeyError, TypeError):
        message = None
    return DeadLetter(
        offset=offset,
        partition=_int(_header(headers, HEADER_PARTITION)),
        source_offset=_int(_header(headers, HEADER_OFFSET)),
        reason=_header(headers, HEADER_REASON),
        parked_at_ms=_int(_header(headers, HEADER_PARKED_AT)),
        raw=raw,
        message=message,
    )


class KafkaDeadLetterTopic:
    """The operator's view of the dead-letter topic: read it without a consumer group (nothing
    is committed, reading changes nothing) and replay from it."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        topic: str,
        messages_topic: str,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._topic = topic
        self._messages_topic = messages_topic

    async def _partitions(self) -> list[TopicPartition]:
        if self._topic not in await self._consumer.topics():
            raise Unavailable(f"no topic {self._topic}: `messaging stack up` creates it")
        numbers = await self._producer.partitions_for(self._topic)  # waits for its metadata
        partitions = [TopicPartition(self._topic, p) for p in sorted(numbers)]
        self._consumer.assign(partitions)
        return partitions

    async def _read(self, starts: dict[TopicPartition, int], limit: int) -> list[DeadLetter]:
        """Up to ``limit`` dead letters from each partition's start offset to its end now."""
        ends = await self._consumer.end_offsets(list(starts))
        found: list[DeadLetter] = []
        todo = {p for p in starts if starts[p] < ends[p]}
        for partition in todo:
            self._consumer.seek(partition, starts[partition])
        while todo and len(found) < limit:
            batches = await self._consumer.getmany(*todo, timeout_ms=1000, max_records=500)
            for partition, records in batches.items():
                for record in records:
                    if record.offset < ends[partition] and len(found) < limit:
                        found.append(dead_letter(record.offset, record.value, record.headers))
            for partition in list(todo):
                if await self._consumer.position(partition) >= ends[partition]:
                    todo.discard(partition)
        return sorted(found, key=lambda d: (d.partition, d.offset))

    async def list(self, limit: int) -> list[DeadLetter]:
        """The last ``limit`` dead letters of each partition, oldest first."""
        partitions = await self._partitions()
        begins = await self._consumer.beginning_offsets(partitions)
        ends = await self._consumer.end_offsets(partitions)
        starts = {p: max(begins[p], ends[p] - limit) for p in partitions}
        letters = await self._read(starts, limit * len(partitions))
        return sorted(letters, key=lambda d: (d.parked_at_ms, d.offset))[-limit:]

    async def replay(self, offsets: Collection[int] | None, *, limit: int = 100_000) -> Replayed:
        """Re-publish the dead letters at ``offsets`` (all when None) to the messages topic."""
        partitions = await self._partitions()
        begins = await self._consumer.beginning_offsets(partitions)
        if offsets is None:
            letters = await self._read(dict(begins), limit)
        else:
            letters = []
            for offset in sorted(set(offsets)):
                starts = {p: max(begins[p], offset) for p in partitions}
                letters += [d for d in await self._read(starts, 1) if d.offset == offset]
        published, left = [], []
        for letter in letters:
            if letter.message is None:
                left.append(letter)
                continue
            try:
                await self._producer.send_and_wait(
                    self._messages_topic,
                    encode_event(letter.message),
                    key=letter.message.chat_id.encode(),
                )
            except KafkaError as exc:
                raise Unavailable(f"re-publishing dead letter {letter.offset}: {exc!r}") from exc
            published.append(letter)
        return Replayed(tuple(published), tuple(left))
