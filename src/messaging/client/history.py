"""What one client sent, received, delivered and acknowledged: input for a consistency checker.

:class:`ChatClient <messaging.client.connection.ChatClient>` fills a :class:`History`
automatically. Everything is plain attrs data and :meth:`History.to_dict` exports it as JSON-ready
dicts. Times are wall-clock milliseconds (``time.time_ns() // 1_000_000``) so they compare with
the server's ``created_at_ms``; ``*_mono`` fields are ``time.monotonic()`` seconds for latencies.

- :class:`SendRecord`: one logical send (one ``client_message_id``), however many times it was put
  on the wire; its outcome is ``pending``, ``acked``, ``rejected``, ``expired`` or ``abandoned``
  (the client closed first).
- :class:`ReceivedRecord`: one message released in order to the application's queue (duplicates
  are counted, not recorded); ``delivered_at_ms`` is set when the application takes it.
- :class:`AckRecord`: one ``ack`` frame sent; :class:`AckedRecord`: one ``acked`` answer.
- :class:`ConnectionEvent`: ``ready``, ``closed`` (with the close code; 1006 when there was no
  close frame) and ``connect_failed``.

The history is kept in memory without bound; a long-running load generator should pass
``record_messages=False`` to keep only sends, acks and connection events.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Literal

import attrs

SendOutcome = Literal["pending", "acked", "rejected", "expired", "abandoned"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@attrs.define(kw_only=True)
class SendRecord:
    chat_id: str
    client_message_id: str
    text: str
    requested_at_ms: int
    requested_mono: float
    attempts: int = 0
    """How many times the ``send_message`` frame was written (first send and resends)."""
    outcome: SendOutcome = "pending"
    sequence: int | None = None
    duplicate: bool | None = None
    created_at_ms: int | None = None
    """The server's persistence time, from the ``send_ack``."""
    finished_at_ms: int | None = None
    finished_mono: float | None = None
    error_code: str | None = None
    errors: list[str] = attrs.field(factory=list)
    """Every error code received for this send, retriable ones included."""


@attrs.define(kw_only=True)
class ReceivedRecord:
    chat_id: str
    sequence: int
    sender_id: str
    sender_device: str
    client_message_id: str
    text: str
    created_at_ms: int
    received_at_ms: int
    """When the frame arrived (a held message keeps the time it arrived, not its release)."""
    replay: bool
    delivered_at_ms: int | None = None
    """When the application took it from the client; None if it never did."""


@attrs.frozen(kw_only=True)
class AckRecord:
    chat_id: str
    sequence: int
    sent_at_ms: int


@attrs.frozen(kw_only=True)
class AckedRecord:
    chat_id: str
    last_acked_sequence: int
    received_at_ms: int


@attrs.frozen(kw_only=True)
class ConnectionEvent:
    kind: Literal["ready", "closed", "connect_failed"]
    at_ms: int
    connection_id: str | None = None
    close_code: int | None = None
    detail: str = ""


@attrs.define(kw_only=True)
class History:
    user_id: str | None = None
    device_id: str | None = None
    record_messages: bool = True
    sends: list[SendRecord] = attrs.field(factory=list)
    received: list[ReceivedRecord] = attrs.field(factory=list)
    acks: list[AckRecord] = attrs.field(factory=list)
    acked: list[AckedRecord] = attrs.field(factory=list)
    connections: list[ConnectionEvent] = attrs.field(factory=list)
    duplicates: Counter[str] = attrs.field(factory=Counter)
    """Per chat: message frames dropped as already delivered or already held."""
    errors: Counter[str] = attrs.field(factory=Counter)
    """Per error code: every ``error`` frame received."""

    # ------------------------------------------------------------ recording

    def send_requested(self, chat_id: str, client_message_id: str, text: str) -> SendRecord:
        record = SendRecord(
            chat_id=chat_id,
            client_message_id=client_message_id,
            text=text,
            requested_at_ms=now_ms(),
            requested_mono=time.monotonic(),
        )
        self.sends.append(record)
        return record

    def message_received(
        self,
        *,
        chat_id: str,
        sequence: int,
        sender_id: str,
        sender_device: str,
        client_message_id: str,
        text: str,
        created_at_ms: int,
        received_at_ms: int,
        replay: bool,
    ) -> ReceivedRecord | None:
        if not self.record_messages:
            return None
        record = ReceivedRecord(
            chat_id=chat_id,
            sequence=sequence,
            sender_id=sender_id,
            sender_device=sender_device,
            client_message_id=client_message_id,
            text=text,
            created_at_ms=created_at_ms,
            received_at_ms=received_at_ms,
            replay=replay,
        )
        self.received.append(record)
        return record

    def ack_sent(self, chat_id: str, sequence: int) -> None:
        self.acks.append(AckRecord(chat_id=chat_id, sequence=sequence, sent_at_ms=now_ms()))

    def acked_received(self, chat_id: str, last_acked_sequence: int) -> None:
        self.acked.append(
            AckedRecord(
                chat_id=chat_id, last_acked_sequence=last_acked_sequence, received_at_ms=now_ms()
            )
        )

    def connection_event(
        self,
        kind: Literal["ready", "closed", "connect_failed"],
        *,
        connection_id: str | None = None,
        close_code: int | None = None,
        detail: str = "",
    ) -> None:
        self.connections.append(
            ConnectionEvent(
                kind=kind,
                at_ms=now_ms(),
                connection_id=connection_id,
                close_code=close_code,
                detail=detail,
            )
        )

    # ------------------------------------------------------------ views

    def delivered(self, chat_id: str | None = None) -> list[ReceivedRecord]:
        """What the application took, in the order it took it (optionally one chat)."""
        return [
            record
            for record in self.received
            if record.delivered_at_ms is not None and chat_id in (None, record.chat_id)
        ]

    def received_sequences(self, chat_id: str) -> list[int]:
        return [record.sequence for record in self.received if record.chat_id == chat_id]

    def send(self, client_message_id: str) -> SendRecord | None:
        for record in reversed(self.sends):
            if record.client_message_id == client_message_id:
                return record
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready export (``orjson.dumps(history.to_dict())``)."""
        return {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "sends": [attrs.asdict(record) for record in self.sends],
            "received": [attrs.asdict(record) for record in self.received],
            "acks": [attrs.asdict(record) for record in self.acks],
            "acked": [attrs.asdict(record) for record in self.acked],
            "connections": [attrs.asdict(record) for record in self.connections],
            "duplicates": dict(self.duplicates),
            "errors": dict(self.errors),
        }
