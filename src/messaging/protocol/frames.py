"""WebSocket protocol v1, the one definition (docs/protocol.md, ADR 0009 amended by ADR 0021).

Every frame, client -> server and server -> client, is a msgspec ``Struct`` tagged by its
``type`` field; :data:`ClientFrame` and :data:`ServerFrame` are the two tagged unions, each
decoded by one ``msgspec.json.Decoder`` that validates while it decodes. The gateway, the client
library (``messaging.client``) and the test fake server (``tests/fakes/fake_ws_server.py``) all
encode and decode with this module; ``tests/unit/test_protocol_doc.py`` proves docs/protocol.md
documents every frame, field, error code and close code here, and nothing else.

Decoding a client frame never raises anything but :class:`FrameError`, whose ``code`` goes back
to the client in an ``error`` frame (with ``ref`` when the frame is a readable ``send_message``
so that the client can match the answer to its pending send); the connection survives it.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final

import msgspec

from messaging.domain.model import Message

PROTOCOL_VERSION = 1
WS_PATH = "/v1/ws"
SUBPROTOCOL = "messaging.v1"
MAX_SEQUENCE = 2**53 - 1
"""The largest sequence a frame may carry: the largest integer a JSON number holds exactly in
every client (JavaScript's ``Number.MAX_SAFE_INTEGER``)."""
MAX_SYNC_CHATS = 1000
MAX_ID_CHARS = 256
"""``chat_id`` of ``ack`` and ``sync_request``, and ``device_id`` of ``auth``. A ``send_message``
has no such parser limit: its ids are checked by the service, whose ``invalid_input`` answer
carries ``ref`` (the frame itself is bounded by ``max_frame_bytes``)."""
MAX_TOKEN_CHARS = 4096
MAX_PING_ID_CHARS = 64
MAX_ERROR_MESSAGE_CHARS = 200


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    PROTOCOL_ABUSE = 4000
    UNAUTHENTICATED = 4001
    DEVICE_MISMATCH = 4003
    SUPERSEDED = 4004
    AUTH_TIMEOUT = 4008
    SLOW_CONSUMER = 4009
    IDLE_TIMEOUT = 4010
    TOO_MANY_CONNECTIONS = 4029


TRANSPORT_CLOSE_CODES: Final = frozenset({1006, 1007})
"""Close codes a client can see that no code of the server sends: 1006 (the connection ended
without a close frame) and 1007 (invalid UTF-8, closed by the transport)."""


class ErrorCode(enum.StrEnum):
    """Every ``code`` of an ``error`` frame. :attr:`retriable` is the one place that says which
    a client retries (the same request, after a backoff or the advised ``retry_after_ms``)."""

    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    FRAME_TOO_LARGE = "frame_too_large"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    INVALID_INPUT = "invalid_input"
    LIMIT_EXCEEDED = "limit_exceeded"
    NOT_FOUND = "not_found"
    NOT_A_MEMBER = "not_a_member"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    STORE_UNAVAILABLE = "store_unavailable"
    INTERNAL_ERROR = "internal_error"

    @property
    def retriable(self) -> bool:
        return self in RETRIABLE_CODES

    @classmethod
    def of(cls, code: str) -> ErrorCode:
        """The code of a domain error (``MessagingError.code``); one the protocol does not know
        (a REST-only code reaching a socket would be a bug) is ``internal_error``."""
        try:
            return cls(code)
        except ValueError:
            return cls.INTERNAL_ERROR


RETRIABLE_CODES: Final = frozenset(
    {
        ErrorCode.RATE_LIMITED,
        ErrorCode.UNAVAILABLE,
        ErrorCode.STORE_UNAVAILABLE,
        ErrorCode.INTERNAL_ERROR,
    }
)
ABUSE_CODES: Final = frozenset(
    {
        ErrorCode.INVALID_FRAME,
        ErrorCode.UNKNOWN_TYPE,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.BINARY_NOT_SUPPORTED,
    }
)
"""Answers to invalid frames: too many of them close the connection (4000)."""


class ErrorRef(msgspec.Struct, frozen=True, omit_defaults=True):
    """What an ``error`` answers: a ``send_message`` (``chat_id`` and ``client_message_id``),
    an ``ack`` (``chat_id``) or a ``sync_request`` (``sync`` with the ``chat_id`` or the
    ``chat_ids`` it names, or neither for a request without ``chats``)."""

    sync: bool = False
    chat_id: str | None = None
    client_message_id: str | None = None
    chat_ids: tuple[str, ...] | None = None


class FrameError(Exception):
    def __init__(self, code: ErrorCode, message: str, ref: ErrorRef | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


# ---------------------------------------------------------------- client -> server

Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)]
Sequence = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQUENCE)]


class Auth(msgspec.Struct, tag="auth", tag_field="type", frozen=True):
    token: Annotated[str, msgspec.Meta(max_length=MAX_TOKEN_CHARS)]
    device_id: Id


class SendMessage(msgspec.Struct, tag="send_message", tag_field="type", frozen=True):
    chat_id: str
    client_message_id: str
    text: str


class Ack(msgspec.Struct, tag="ack", tag_field="type", frozen=True):
    chat_id: Id
    sequence: Sequence


class SyncPosition(msgspec.Struct, frozen=True):
    chat_id: Id
    last_acked_sequence: Sequence


class SyncRequest(msgspec.Struct, tag="sync_request", tag_field="type", frozen=True):
    chats: Annotated[tuple[SyncPosition, ...], msgspec.Meta(max_length=MAX_SYNC_CHATS)] | None = (
        None
    )
    """None: every chat of the user, from the server's stored delivery state."""


class Ping(msgspec.Struct, tag="ping", tag_field="type", frozen=True):
    id: Annotated[str, msgspec.Meta(max_length=MAX_PING_ID_CHARS)] | None = None
    """Echoed in the ``pong``; any other value (not a string, too long) is read as none."""


ClientFrame = Auth | SendMessage | Ack | SyncRequest | Ping

# ---------------------------------------------------------------- server -> client


class Limits(msgspec.Struct, frozen=True):
    max_frame_bytes: int
    outbound_queue_messages: int
    outbound_queue_bytes: int
    sync_page_size: int
    idle_timeout_ms: int


class Ready(msgspec.Struct, tag="ready", tag_field="type", frozen=True):
    protocol: int
    user_id: str
    device_id: str
    connection_id: str
    server_time_ms: int
    limits: Limits


class MessageFrame(
    msgspec.Struct, tag="message", tag_field="type", frozen=True, omit_defaults=True
):
    chat_id: str
    sequence: int
    sender_id: str
    sender_device: str
    client_message_id: str
    text: str
    created_at_ms: int
    replay: bool = False
    """Sent in answer to a ``sync_request`` (omitted when false)."""

    def to_message(self) -> Message:
        return Message(
            chat_id=self.chat_id,
            sequence=self.sequence,
            sender_id=self.sender_id,
            sender_device=self.sender_device,
            client_message_id=self.client_message_id,
            text=self.text,
            created_at_ms=self.created_at_ms,
        )


class SendAck(msgspec.Struct, tag="send_ack", tag_field="type", frozen=True):
    chat_id: str
    client_message_id: str
    sequence: int
    duplicate: bool
    created_at_ms: int


class Acked(msgspec.Struct, tag="acked", tag_field="type", frozen=True):
    chat_id: str
    last_acked_sequence: int


class SyncComplete(msgspec.Struct, tag="sync_complete", tag_field="type", frozen=True):
    chat_id: str
    head: int


class Pong(msgspec.Struct, tag="pong", tag_field="type", frozen=True):
    id: str | None
    server_time_ms: int


class Resync(msgspec.Struct, tag="resync", tag_field="type", frozen=True):
    reason: str


class Error(msgspec.Struct, tag="error", tag_field="type", frozen=True, omit_defaults=True):
    code: ErrorCode
    message: str
    retriable: bool
    ref: ErrorRef | None = None
    retry_after_ms: int | None = None
    """When to retry (``rate_limited`` by a token bucket)."""


ServerFrame = Ready | MessageFrame | SendAck | Acked | SyncComplete | Pong | Resync | Error
Frame = ClientFrame | ServerFrame

CLIENT_FRAMES: Final[tuple[type[msgspec.Struct], ...]] = (Auth, SendMessage, Ack, SyncRequest, Ping)
SERVER_FRAMES: Final[tuple[type[msgspec.Struct], ...]] = (
    Ready,
    MessageFrame,
    SendAck,
    Acked,
    SyncComplete,
    Pong,
    Resync,
    Error,
)


def tag(frame_type: type[msgspec.Struct]) -> str:
    """The ``type`` of a frame class."""
    value = frame_type.__struct_config__.tag
    assert isinstance(value, str)
    return value


CLIENT_TYPES: Final = frozenset(tag(cls) for cls in CLIENT_FRAMES)


def kind(frame: Frame) -> str:
    """The ``type`` of a frame (a metrics label)."""
    return tag(type(frame))


# ---------------------------------------------------------------- codec

_encoder = msgspec.json.Encoder()
_client_decoder = msgspec.json.Decoder(ClientFrame)
_server_decoder = msgspec.json.Decoder(ServerFrame)


_buffer = bytearray(4096)


def encode(frame: msgspec.Struct) -> bytes:
    """A frame's JSON as UTF-8 bytes in an allocation of its own size, fit to be queued as is.
    ``Encoder.encode`` returns the JSON in a buffer half as large again (measured with
    tracemalloc), and a connection may hold a thousand queued frames: the frame is encoded into
    one reused buffer (which ``encode_into`` trims to the JSON) and copied out, as fast as
    ``encode`` alone. Synchronous, so no other frame can use the buffer meanwhile."""
    _encoder.encode_into(frame, _buffer)
    return bytes(_buffer)


def _not_json() -> FrameError:
    return FrameError(ErrorCode.INVALID_FRAME, "a frame is one JSON object")


def decode_client_frame(data: bytes | str) -> ClientFrame:
    """A text frame -> a typed client frame, or :class:`FrameError`."""
    try:
        frame: ClientFrame = _client_decoder.decode(data)
    except msgspec.ValidationError as exc:
        # Validation can fail before the decoder has read the whole text (an unknown ``type``
        # first, invalid JSON later): the text may not be JSON at all.
        try:
            value = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise _not_json() from None
        return _lenient(value, exc)
    except msgspec.DecodeError:
        raise _not_json() from None
    return frame


def parse_client_frame(data: object) -> ClientFrame:
    """An already decoded JSON value -> a typed client frame, or :class:`FrameError`; the same
    answers as :func:`decode_client_frame`."""
    try:
        frame: ClientFrame = msgspec.convert(data, ClientFrame, strict=True)
    except msgspec.ValidationError as exc:
        return _lenient(data, exc)
    return frame


def decode_server_frame(data: bytes | str) -> ServerFrame:
    """A text frame from the server -> a typed server frame; ``msgspec.DecodeError`` (or its
    subclass ``msgspec.ValidationError``) when it is not one."""
    frame: ServerFrame = _server_decoder.decode(data)
    return frame


def _lenient(data: object, exc: msgspec.ValidationError) -> ClientFrame:
    """A ``ping`` whose ``id`` is not a short string is a ping without ``id`` (its only
    field); anything else invalid raises :class:`FrameError`."""
    if isinstance(data, dict) and data.get("type") == "ping":
        return Ping()
    raise _refusal(data, exc) from None


def _refusal(data: object, exc: msgspec.ValidationError) -> FrameError:
    """The answer to a JSON value that is not a valid client frame."""
    if not isinstance(data, dict):
        return FrameError(ErrorCode.INVALID_FRAME, "a frame is a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        return FrameError(ErrorCode.INVALID_FRAME, "'type' must be a string")
    if kind not in CLIENT_TYPES:
        return FrameError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}")
    ref = None
    if kind == "send_message":
        chat_id = data.get("chat_id")
        client_message_id = data.get("client_message_id")
        if isinstance(chat_id, str) or isinstance(client_message_id, str):
            ref = ErrorRef(
                chat_id=chat_id if isinstance(chat_id, str) else None,
                client_message_id=(
                    client_message_id if isinstance(client_message_id, str) else None
                ),
            )
    text = f"invalid {kind}: {exc}"
    return FrameError(ErrorCode.INVALID_FRAME, text[:MAX_ERROR_MESSAGE_CHARS], ref)


# ---------------------------------------------------------------- server frame builders


def ready(
    *, user_id: str, device_id: str, connection_id: str, server_time_ms: int, limits: Limits
) -> Ready:
    return Ready(
        protocol=PROTOCOL_VERSION,
        user_id=user_id,
        device_id=device_id,
        connection_id=connection_id,
        server_time_ms=server_time_ms,
        limits=limits,
    )


def message(msg: Message, *, replay: bool = False) -> MessageFrame:
    return MessageFrame(
        chat_id=msg.chat_id,
        sequence=msg.sequence,
        sender_id=msg.sender_id,
        sender_device=msg.sender_device,
        client_message_id=msg.client_message_id,
        text=msg.text,
        created_at_ms=msg.created_at_ms,
        replay=replay,
    )


def send_ack(msg: Message, *, duplicate: bool) -> SendAck:
    return SendAck(
        chat_id=msg.chat_id,
        client_message_id=msg.client_message_id,
        sequence=msg.sequence,
        duplicate=duplicate,
        created_at_ms=msg.created_at_ms,
    )


def acked(chat_id: str, last_acked_sequence: int) -> Acked:
    return Acked(chat_id=chat_id, last_acked_sequence=last_acked_sequence)


def sync_complete(chat_id: str, head: int) -> SyncComplete:
    return SyncComplete(chat_id=chat_id, head=head)


def pong(ping_id: str | None, server_time_ms: int) -> Pong:
    return Pong(id=ping_id, server_time_ms=server_time_ms)


def resync(reason: str) -> Resync:
    return Resync(reason=reason)


def error(
    code: ErrorCode,
    text: str,
    *,
    ref: ErrorRef | None = None,
    retry_after_ms: int | None = None,
) -> Error:
    """An ``error`` frame; whether it is retriable is the code's (:attr:`ErrorCode.retriable`)."""
    return Error(
        code=code, message=text, retriable=code.retriable, ref=ref, retry_after_ms=retry_after_ms
    )


def send_ref(chat_id: str, client_message_id: str) -> ErrorRef:
    return ErrorRef(chat_id=chat_id, client_message_id=client_message_id)


def chat_ref(chat_id: str) -> ErrorRef:
    return ErrorRef(chat_id=chat_id)


def sync_ref(request: SyncRequest) -> ErrorRef:
    """Marks an error as the answer to a sync request (the client retries that sync)."""
    if request.chats is None:
        return ErrorRef(sync=True)
    return ErrorRef(sync=True, chat_ids=tuple(p.chat_id for p in request.chats))


def sync_chat_ref(chat_id: str) -> ErrorRef:
    return ErrorRef(sync=True, chat_id=chat_id)
