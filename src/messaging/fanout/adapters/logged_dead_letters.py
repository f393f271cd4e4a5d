"""The first ``DeadLetters``: log each parked record where an operator sees it (the consumer
counts it in ``messaging_fanout_dead_letters_total``). A Kafka dead-letter topic with
``messaging dlq list|replay`` replaces it on the same port (ADR 0022)."""

from __future__ import annotations

import logging

from messaging.domain.model import Message

log = logging.getLogger(__name__)


class LoggedDeadLetters:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    async def park(self, record: Message | bytes, partition: int, offset: int, reason: str) -> None:
        if isinstance(record, Message):
            what = f"message {record.chat_id}#{record.sequence}"
        else:
            what = f"undecodable record ({len(record)} bytes: {record[:64]!r})"
        log.error("dead letter %s/%d@%d: %s: %s", self._topic, partition, offset, what, reason)
