"""``MessagePublisher`` on Kafka: one record per message, keyed by chat_id, so one partition
carries a chat. The producer uses ``acks=all`` (not idempotent: ADR 0006); ``publish``
returns only when the broker has acknowledged every record of the batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from messaging.domain.errors import Unavailable
from messaging.domain.model import Message
from messaging.protocol.wire import encode_event


class KafkaMessagePublisher:
    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def publish(self, messages: Sequence[Message]) -> None:
        try:
            pending = [
                await self._producer.send(self._topic, encode_event(m), key=m.chat_id.encode())
                for m in messages
            ]
            await asyncio.gather(*pending)
        except KafkaError as exc:
            raise Unavailable(f"Kafka did not take {len(messages)} message(s): {exc!r}") from exc
