"""The state the parts of :class:`~messaging.client.connection.ChatClient` share, and the
small operations on it that more than one part uses (ADR 0021: the client is split by
responsibility, after aiokafka's consumer): the supervisor (``connection.py``: connect,
backoff, read, keepalive), sends (``sends.py``), syncs (``syncs.py``) and delivery with acks
(``acks.py``)."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from messaging.client.errors import ClientClosed
from messaging.client.history import History, ReceivedRecord, SendOutcome, SendRecord, now_ms
from messaging.client.ordering import ReorderBuffer
from messaging.domain.model import Message
from messaging.protocol import frames
from messaging.protocol.frames import CloseCode

FATAL_CLOSE_CODES = frozenset(
    {CloseCode.UNAUTHENTICATED, CloseCode.DEVICE_MISMATCH, CloseCode.SUPERSEDED}
)
"""Closes after which the client does not reconnect: 4004 means another connection of this
device took over (reconnecting would take it back, and so on, ADR 0034)."""
NO_CLOSE_FRAME = 1006
DEFAULT_MAX_FRAME_BYTES = 16 * 1024
CLIENT_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.:\-]")

T = TypeVar("T")


def positive(_instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0")


@attrs.frozen(kw_only=True)
class ClientOptions:
    backoff_initial: float = attrs.field(default=0.1, validator=positive)
    backoff_max: float = attrs.field(default=5.0, validator=positive)
    backoff_factor: float = attrs.field(default=2.0, validator=positive)
    backoff_jitter: float = 0.5
    """The delay is drawn uniformly from ``[d * (1 - jitter), d]``."""
    start_timeout: float | None = attrs.field(default=30.0, validator=positive)
    """How long :meth:`ChatClient.start` waits for the first ``ready``."""
    connect_timeout: float = attrs.field(default=10.0, validator=positive)
    """TCP connect + upgrade + ``auth`` until ``ready``."""
    close_timeout: float = attrs.field(default=2.0, validator=positive)
    ping_interval: float | None = attrs.field(default=20.0, validator=positive)
    ping_timeout: float | None = attrs.field(default=20.0, validator=positive)
    ack_interval: float = attrs.field(default=0.1, validator=positive)
    keepalive_interval: float = attrs.field(default=20.0, validator=positive)
    """A ``ping`` frame at least this often: the server closes a connection that sent no frame
    for its idle timeout (4010, 60 s by default; WebSocket-level pings are not frames)."""
    gap_delay: float = attrs.field(default=0.2, validator=positive)
    sync_timeout: float = attrs.field(default=30.0, validator=positive)
    """An explicit sync not completed after this long no longer holds back a gap sync."""
    discovery_idle: float = attrs.field(default=2.0, validator=positive)
    """A position-less sync counts as running until no replay frame came for this long."""
    discover_on_reconnect: bool = True
    send_ack_timeout: float = attrs.field(default=30.0, validator=positive)
    send_max_age: float = attrs.field(default=86_400.0, validator=positive)
    queue_size: int = attrs.field(default=10_000, validator=positive)
    reorder_capacity: int = attrs.field(default=10_000, validator=positive)
    max_receive_bytes: int = attrs.field(default=2**20, validator=positive)
    compression: bool = False
    offer_subprotocol: bool = True
    receive_buffer_bytes: int | None = attrs.field(default=None, validator=positive)
    """``SO_RCVBUF`` of the TCP socket (None: the kernel's autotuned default). A small buffer
    makes a client that stops reading (:meth:`ChatClient.pause_reading`) overflow the server's
    outbound queue after little data (tests of the slow-consumer path)."""

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.backoff_jitter <= 1:
            raise ValueError("backoff_jitter must be in [0, 1]")
        if self.backoff_initial > self.backoff_max:
            raise ValueError("backoff_initial must be <= backoff_max")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """The delay before retry number ``attempt`` (0-based)."""
        delay = min(
            self.backoff_max, self.backoff_initial * self.backoff_factor ** min(attempt, 64)
        )
        return delay * (1.0 - self.backoff_jitter * rng.random())


@attrs.define(kw_only=True)
class ClientStats:
    connect_attempts: int = 0
    connect_failures: int = 0
    connects: int = 0
    """``ready`` frames received."""
    reconnects: int = 0
    """``ready`` frames after the first."""
    close_codes: Counter[int] = attrs.field(factory=Counter)
    """Close codes of connections that had reached ``ready`` (1006: no close frame)."""
    slow_consumer_disconnects: int = 0
    sync_requests: int = 0
    gaps_detected: int = 0
    gap_syncs: int = 0
    resyncs: int = 0
    resends: int = 0
    duplicates: int = 0
    skipped: int = 0
    """Sequences skipped by a finished sync (invisible to the user)."""
    bad_frames: int = 0


@attrs.frozen(kw_only=True)
class SendResult:
    chat_id: str
    client_message_id: str
    sequence: int
    duplicate: bool
    """The server's flag: true when a retry found the message already stored."""
    created_at_ms: int
    attempts: int


# ---------------------------------------------------------------- internal state


@attrs.frozen
class Inbound:
    message: Message
    received_at_ms: int
    replay: bool

    @property
    def sequence(self) -> int:
        return self.message.sequence


Delivered = tuple[Message, ReceivedRecord | None]


@attrs.define(eq=False)
class SyncMarker:
    """An open sync of one chat *with a position*, oldest first (answers come in order)."""

    sent_at: float
    waiters: list[asyncio.Future[int]] = attrs.field(factory=list)


@attrs.define(eq=False)
class Chat:
    chat_id: str
    buffer: ReorderBuffer[Inbound]
    enqueued: int = 0
    """Highest sequence released to the queue (or skipped)."""
    consumed: int = 0
    """Highest sequence taken by the application."""
    ack_sent: int = 0
    ack_confirmed: int = 0
    markers: deque[SyncMarker] = attrs.field(factory=deque)
    gap_due: float | None = None
    fresh: bool = False
    """First learned during a position-less sync: its baseline comes from that sync."""
    awaiting_discovery: bool = False
    """A position-less sync covers this chat and has not completed it yet."""
    removed: bool = False
    waiters: list[tuple[int, asyncio.Future[None]]] = attrs.field(factory=list)


@attrs.define(eq=False)
class PendingSend:
    chat_id: str
    client_message_id: str
    text: str
    future: asyncio.Future[SendResult]
    record: SendRecord
    created: float
    due: float | None = 0.0
    """When to write it (monotonic); None: written on this connection, awaiting the answer."""
    sent_at: float = 0.0
    retries: int = 0


class ConnectFailed(Exception):
    def __init__(self, detail: str, close_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.close_code = close_code


def close_info(exc: ConnectionClosed) -> tuple[int, str]:
    if exc.rcvd is not None:
        return exc.rcvd.code, exc.rcvd.reason
    return NO_CLOSE_FRAME, ""


def text_of(frame: frames.ClientFrame) -> str:
    return frames.encode(frame).decode()


def mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


TokenSource = str | Callable[[], Awaitable[str]]


class ClientCore:
    """What every part of the client reads and writes; no behaviour of its own beyond the
    shared helpers below (the ticker's schedule, the current socket's writer, the chats'
    reorder buffers, waiting and failing)."""

    # Declared here, set by ChatClient.__init__: the state the parts share.
    url: str
    device_id: str
    options: ClientOptions
    history: History
    stats: ClientStats
    user_id: str | None
    connection_id: str | None
    limits: dict[str, int]
    _token: TokenSource
    _rng: random.Random
    _chats: dict[str, Chat]
    _pending: dict[str, PendingSend]
    _queue: asyncio.Queue[Delivered | None]
    _reading: asyncio.Event
    _wake: asyncio.Event
    _next_due: float
    _ack_due: float | None
    _last_keepalive: float
    _ws: ClientConnection | None
    _epoch: int
    _sync_all: bool
    _discovery_until: float | None
    _discovery_waiters: list[asyncio.Future[None]]
    _orphan_waiters: dict[str, list[asyncio.Future[int]]]
    _sync_retries: dict[str, tuple[float, list[asyncio.Future[int]]]]
    """Chats whose sync the server answered with a retriable error: when to ask again."""
    _sync_all_due: float | None
    _sync_error_streak: int
    _ready_waiters: list[asyncio.Future[None]]
    _supervisor: asyncio.Task[None] | None
    _ticker: asyncio.Task[None] | None
    _failure: BaseException | None
    _closed: bool
    _id_prefix: str
    _id_counter: int

    def _chat(self, chat_id: str, *, delivered: int = 0) -> Chat:
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = Chat(
                chat_id=chat_id,
                buffer=ReorderBuffer(delivered, capacity=self.options.reorder_capacity),
                enqueued=delivered,
                consumed=delivered,
                fresh=self._discovery_active(),
            )
            self._chats[chat_id] = chat
        return chat

    async def _release(self, chat: Chat, released: list[Inbound]) -> None:
        for inbound in released:
            message = inbound.message
            record = self.history.message_received(
                chat_id=message.chat_id,
                sequence=message.sequence,
                sender_id=message.sender_id,
                sender_device=message.sender_device,
                client_message_id=message.client_message_id,
                text=message.text,
                created_at_ms=message.created_at_ms,
                received_at_ms=inbound.received_at_ms,
                replay=inbound.replay,
            )
            await self._queue.put((message, record))
            chat.enqueued = message.sequence
        chat.enqueued = max(chat.enqueued, chat.buffer.delivered)
        if chat.waiters:
            for sequence, waiter in chat.waiters:
                if sequence <= chat.enqueued and not waiter.done():
                    waiter.set_result(None)
        self._check_gap(chat)

    def _check_gap(self, chat: Chat) -> None:
        if not chat.buffer.has_gap:
            chat.gap_due = None
        elif chat.gap_due is None:
            self.stats.gaps_detected += 1
            chat.gap_due = time.monotonic() + self.options.gap_delay
            self._schedule(chat.gap_due)

    def _discovery_active(self) -> bool:
        return self._discovery_until is not None and time.monotonic() < self._discovery_until

    def _touch_discovery(self) -> None:
        if self._discovery_until is not None:
            self._discovery_until = time.monotonic() + self.options.discovery_idle
            self._schedule(self._discovery_until)

    def _schedule(self, due: float) -> None:
        if due < self._next_due:
            self._next_due = due
        self._wake.set()

    async def _write(self, epoch: int, frame: frames.ClientFrame | str) -> bool:
        """Write one frame on the current connection; False when it is gone or changed."""
        ws = self._ws
        if ws is None or epoch != self._epoch:
            return False
        try:
            await ws.send(frame if isinstance(frame, str) else text_of(frame))
        except ConnectionClosed:
            return False
        return epoch == self._epoch

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise ClientClosed("the client is closed")

    async def _wait(
        self,
        future: asyncio.Future[T],
        registry: list[asyncio.Future[T]] | None,
    ) -> T:
        try:
            return await future
        finally:
            if registry is not None and future in registry:
                registry.remove(future)
            if not future.done():
                future.cancel()

    def _finish_send(
        self, pending: PendingSend, error: BaseException, *, outcome: SendOutcome
    ) -> None:
        self._pending.pop(pending.client_message_id, None)
        record = pending.record
        record.outcome = outcome
        record.error_code = getattr(error, "code", None) or type(error).__name__
        record.finished_at_ms = now_ms()
        record.finished_mono = time.monotonic()
        if not pending.future.done():
            pending.future.set_exception(error)

    def _fail(self, exc: BaseException) -> None:
        """Stop for good: every waiter and pending send fails with ``exc``."""
        if self._failure is None:
            self._failure = exc
        failure = self._failure
        for pending in list(self._pending.values()):
            self._finish_send(pending, failure, outcome="abandoned")
        waiters: list[asyncio.Future[Any]] = [*self._ready_waiters, *self._discovery_waiters]
        for chat in self._chats.values():
            waiters.extend(waiter for _, waiter in chat.waiters)
            for marker in chat.markers:
                waiters.extend(marker.waiters)
        for orphans in self._orphan_waiters.values():
            waiters.extend(orphans)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(failure)
                mark_retrieved(waiter)
        self._ready_waiters.clear()
        self._discovery_waiters.clear()
        self._orphan_waiters.clear()
        if self._queue.empty():
            self._queue.put_nowait(None)
