"""The fanout plane's own ports: the event log it consumes and the hand-off to other processes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs

from messaging.domain.model import Message
from messaging.protocol.delivery import Delivery


@attrs.frozen
class EventBatch:
    messages: tuple[Message, ...]
    position: object
    """Opaque: what ``commit`` needs to mark the batch consumed."""


class EventSource(Protocol):
    async def poll(self, timeout_seconds: float) -> EventBatch: ...

    async def commit(self, batch: EventBatch) -> None: ...

    def lag(self) -> int:
        """Records behind the log end on this consumer's partitions."""
        ...


class Handoff(Protocol):
    """Passes deliveries to another app process (the one holding the sockets)."""

    async def send(self, instance_id: str, deliveries: Sequence[Delivery]) -> None: ...
