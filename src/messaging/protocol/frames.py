"""WebSocket protocol v1: typed client frames, server frame builders, codes (docs/protocol.md).

Parsing never raises anything but :class:`FrameError`, whose ``code`` goes back to the client
in an ``error`` frame; the connection survives it.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from messaging.domain.model import Message
from messaging.protocol.wire import message_json

PROTOCOL_VERSION = 1
WS_PATH = "/v1/ws"
SUBPROTOCOL = "messaging.v1"
MAX_SEQUENCE = 2**53 - 1
MAX_SYNC_CHATS = 1000


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    PROTOCOL_ABUSE = 4000
    UNAUTHENTICATED = 4001
    DEVICE_MISMATCH = 4003
    AUTH_TIMEOUT = 4008
    SLOW_CONSUMER = 4009
    IDLE_TIMEOUT = 4010
    TOO_MANY_CONNECTIONS = 4029


class ErrorCode(enum.StrEnum):
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    FRAME_TOO_LARGE = "frame_too_large"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    RATE_LIMITED = "rate_limited"


class FrameError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- client -> server


@attrs.frozen
class Auth:
    token: str
    device_id: str


@attrs.frozen
class SendMessage:
    chat_id: str
    client_message_id: str
    text: str


@attrs.frozen
class Ack:
    chat_id: str
    sequence: int


@attrs.frozen
class SyncPosition:
    chat_id: str
    last_acked_sequence: int


@attrs.frozen
class SyncRequest:
    chats: tuple[SyncPosition, ...] | None
    """None: every chat of the user, from the server's stored delivery state."""


@attrs.frozen
class Ping:
    id: str | None


ClientFrame = Auth | SendMessage | Ack | SyncRequest | Ping


def _str(data: dict[str, Any], name: str, *, max_len: int = 256) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise FrameError(ErrorCode.INVALID_FRAME, f"'{name}' must be a string")
    if len(value) > max_len:
        raise FrameError(ErrorCode.INVALID_FRAME, f"'{name}' is longer than {max_len}")
    return value


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEQUENCE:
        raise FrameError(ErrorCode.INVALID_FRAME, f"'{name}' must be a non-negative integer")
    return value


def parse_client_frame(data: object) -> ClientFrame:
    """A decoded JSON value -> a typed frame, or FrameError."""
    if not isinstance(data, dict):
        raise FrameError(ErrorCode.INVALID_FRAME, "a frame is a JSON object")
    kind = data.get("type")
    if kind == "send_message":
        return SendMessage(
            chat_id=_str(data, "chat_id"),
            client_message_id=_str(data, "client_message_id"),
            text=_str(data, "text", max_len=1 << 20),
        )
    if kind == "ack":
        return Ack(chat_id=_str(data, "chat_id"), sequence=_int(data, "sequence"))
    if kind == "sync_request":
        chats = data.get("chats")
        if chats is None:
            return SyncRequest(chats=None)
        if not isinstance(chats, list) or len(chats) > MAX_SYNC_CHATS:
            raise FrameError(
                ErrorCode.INVALID_FRAME, f"'chats' must be a list of at most {MAX_SYNC_CHATS}"
            )
        positions = []
        for entry in chats:
            if not isinstance(entry, dict):
                raise FrameError(ErrorCode.INVALID_FRAME, "each of 'chats' is an object")
            positions.append(
                SyncPosition(
                    chat_id=_str(entry, "chat_id"),
                    last_acked_sequence=_int(entry, "last_acked_sequence"),
                )
            )
        return SyncRequest(chats=tuple(positions))
    if kind == "ping":
        ping_id = data.get("id")
        return Ping(id=ping_id if isinstance(ping_id, str) and len(ping_id) <= 64 else None)
    if kind == "auth":
        return Auth(token=_str(data, "token", max_len=4096), device_id=_str(data, "device_id"))
    if not isinstance(kind, str):
        raise FrameError(ErrorCode.INVALID_FRAME, "'type' must be a string")
    raise FrameError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}")


# ---------------------------------------------------------------- server -> client


def ready(
    *, user_id: str, device_id: str, connection_id: str, server_time_ms: int, limits: dict[str, int]
) -> dict[str, Any]:
    return {
        "type": "ready",
        "protocol": PROTOCOL_VERSION,
        "user_id": user_id,
        "device_id": device_id,
        "connection_id": connection_id,
        "server_time_ms": server_time_ms,
        "limits": limits,
    }


def message(msg: Message, *, replay: bool = False) -> dict[str, Any]:
    frame = {"type": "message", **message_json(msg)}
    if replay:
        frame["replay"] = True
    return frame


def send_ack(msg: Message, *, duplicate: bool) -> dict[str, Any]:
    return {
        "type": "send_ack",
        "chat_id": msg.chat_id,
        "client_message_id": msg.client_message_id,
        "sequence": msg.sequence,
        "duplicate": duplicate,
        "created_at_ms": msg.created_at_ms,
    }


def acked(chat_id: str, last_acked_sequence: int) -> dict[str, Any]:
    return {"type": "acked", "chat_id": chat_id, "last_acked_sequence": last_acked_sequence}


def sync_complete(chat_id: str, head: int) -> dict[str, Any]:
    return {"type": "sync_complete", "chat_id": chat_id, "head": head}


def pong(ping_id: str | None, server_time_ms: int) -> dict[str, Any]:
    return {"type": "pong", "id": ping_id, "server_time_ms": server_time_ms}


def resync(reason: str) -> dict[str, Any]:
    return {"type": "resync", "reason": reason}


def error(
    code: str,
    text: str,
    *,
    retriable: bool = False,
    ref: dict[str, Any] | None = None,
    retry_after_ms: int | None = None,
) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "error",
        "code": code,
        "message": text,
        "retriable": retriable,
    }
    if ref:
        frame["ref"] = ref
    if retry_after_ms is not None:
        frame["retry_after_ms"] = retry_after_ms
    return frame
