"""JSON shapes shared by REST bodies and WebSocket frames, and their schemas."""

from __future__ import annotations

from typing import Any

import orjson

from messaging.domain.model import Chat, ChatSummary, Message
from messaging.protocol.http import JsonSchema


def message_json(message: Message) -> dict[str, Any]:
    return {
        "chat_id": message.chat_id,
        "sequence": message.sequence,
        "sender_id": message.sender_id,
        "sender_device": message.sender_device,
        "client_message_id": message.client_message_id,
        "text": message.text,
        "created_at_ms": message.created_at_ms,
    }


def message_from_json(data: dict[str, Any]) -> Message:
    return Message(
        chat_id=str(data["chat_id"]),
        sequence=int(data["sequence"]),
        sender_id=str(data["sender_id"]),
        sender_device=str(data["sender_device"]),
        client_message_id=str(data["client_message_id"]),
        text=str(data["text"]),
        created_at_ms=int(data["created_at_ms"]),
    )


EVENT_VERSION = 1


def encode_event(message: Message) -> bytes:
    """A persisted message as a Kafka record value (keyed by chat_id)."""
    return orjson.dumps({"v": EVENT_VERSION, **message_json(message)})


def decode_event(value: bytes) -> Message:
    data = orjson.loads(value)
    if not isinstance(data, dict) or data.get("v") != EVENT_VERSION:
        raise ValueError("not a version 1 message event")
    return message_from_json(data)


def chat_json(chat: Chat) -> dict[str, Any]:
    return {
        "chat_id": chat.chat_id,
        "kind": chat.kind.value,
        "title": chat.title,
        "created_by": chat.created_by,
        "created_at_ms": chat.created_at_ms,
        "head": chat.head,
    }


def summary_json(summary: ChatSummary) -> dict[str, Any]:
    return {
        **chat_json(summary.chat),
        "visible_head": summary.visible_head,
        "joined_sequence": summary.membership.joined_seq,
        "last_acked_sequence": summary.last_acked_sequence,
        "unread": summary.unread,
        "last_message_at_ms": summary.chat.last_message_at_ms,
    }


_INT: JsonSchema = {"type": "integer", "minimum": 0}
_STR: JsonSchema = {"type": "string"}

MESSAGE_SCHEMA: JsonSchema = {
    "type": "object",
    "required": [
        "chat_id",
        "sequence",
        "sender_id",
        "sender_device",
        "client_message_id",
        "text",
        "created_at_ms",
    ],
    "properties": {
        "chat_id": _STR,
        "sequence": _INT,
        "sender_id": _STR,
        "sender_device": _STR,
        "client_message_id": _STR,
        "text": _STR,
        "created_at_ms": _INT,
    },
}

CHAT_SCHEMA: JsonSchema = {
    "type": "object",
    "required": ["chat_id", "kind", "title", "created_by", "created_at_ms", "head"],
    "properties": {
        "chat_id": _STR,
        "kind": {"type": "string", "enum": ["direct", "group"]},
        "title": _STR,
        "created_by": _STR,
        "created_at_ms": _INT,
        "head": _INT,
    },
}

SUMMARY_SCHEMA: JsonSchema = {
    "type": "object",
    "required": [*CHAT_SCHEMA["required"], "visible_head", "last_acked_sequence", "unread"],
    "properties": {
        **CHAT_SCHEMA["properties"],
        "visible_head": _INT,
        "joined_sequence": _INT,
        "last_acked_sequence": _INT,
        "unread": _INT,
        "last_message_at_ms": _INT,
    },
}
