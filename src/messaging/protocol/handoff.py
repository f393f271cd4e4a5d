"""The hand-off envelope between app processes (ADR 0007's Redis pub/sub hand-off), versioned
and typed like the WebSocket frames (ADR 0021).

Version 1 is ``{"v": 1, "deliveries": [{"m": <message>, "r": [<user id>, ...]}, ...]}``, where
``<message>`` has the fields of a ``message`` frame without ``type`` (docs/protocol.md). The
version before it, a bare list of those deliveries, is still decoded, so that processes of both
versions can hand off to each other during a rolling deploy. Anything else raises
:class:`HandoffError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import msgspec

from messaging.domain.model import Message
from messaging.protocol.delivery import Delivery

HANDOFF_VERSION: Final = 1


class HandoffError(ValueError):
    """A payload that is not a hand-off envelope of a known version."""


class HandoffMessage(msgspec.Struct, frozen=True):
    chat_id: str
    sequence: int
    sender_id: str
    sender_device: str
    client_message_id: str
    text: str
    created_at_ms: int


class HandoffDelivery(msgspec.Struct, frozen=True):
    m: HandoffMessage
    r: tuple[str, ...]
    """The recipients' user ids."""


class HandoffEnvelope(msgspec.Struct, frozen=True):
    v: Literal[1]
    deliveries: tuple[HandoffDelivery, ...]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(HandoffEnvelope | tuple[HandoffDelivery, ...])


def encode_handoff(deliveries: Sequence[Delivery]) -> bytes:
    """Deliveries -> the payload of one hand-off (version :data:`HANDOFF_VERSION`)."""
    return _encoder.encode(
        HandoffEnvelope(
            v=HANDOFF_VERSION,
            deliveries=tuple(
                HandoffDelivery(m=_wire(d.message), r=tuple(d.recipients)) for d in deliveries
            ),
        )
    )


def decode_handoff(payload: bytes | str) -> list[Delivery]:
    """The payload of one hand-off -> its deliveries, or :class:`HandoffError`."""
    try:
        decoded = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise HandoffError(f"not a hand-off envelope: {exc}") from None
    items = decoded.deliveries if isinstance(decoded, HandoffEnvelope) else decoded
    return [Delivery(_domain(item.m), item.r) for item in items]


def _wire(message: Message) -> HandoffMessage:
    return HandoffMessage(
        chat_id=message.chat_id,
        sequence=message.sequence,
        sender_id=message.sender_id,
        sender_device=message.sender_device,
        client_message_id=message.client_message_id,
        text=message.text,
        created_at_ms=message.created_at_ms,
    )


def _domain(message: HandoffMessage) -> Message:
    return Message(
        chat_id=message.chat_id,
        sequence=message.sequence,
        sender_id=message.sender_id,
        sender_device=message.sender_device,
        client_message_id=message.client_message_id,
        text=message.text,
        created_at_ms=message.created_at_ms,
    )
