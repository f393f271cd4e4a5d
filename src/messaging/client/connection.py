"""The real-time client: protocol v1 over WebSocket (docs/protocol.md, "Client rules").

Lifecycle and tasks
-------------------
A :class:`ChatClient` owns exactly two background tasks, created by :meth:`ChatClient.start`
(or ``async with``) and cancelled and awaited by :meth:`ChatClient.close` (also when ``start``
fails half way): the **supervisor**, which connects, authenticates, reads frames and reconnects,
and the **ticker**, which does every timed or outgoing thing (syncs, resends, acks, expiries).
The supervisor never writes to the socket, so a server that blocks writing to a slow client can
never dead-lock against it.

Connecting
----------
``auth`` is the first frame; the answer is ``ready`` or a close code. 4001 and 4003 are fatal
(:class:`~messaging.client.errors.AuthRejected`: no reconnect, every pending call fails with it).
Any other close or error reconnects after an exponential backoff with jitter
(``backoff_initial`` .. ``backoff_max``), reset by every ``ready``.

Ordering, duplicates, gaps and syncs
------------------------------------
Every chat has a :class:`~messaging.client.ordering.ReorderBuffer`. Released messages go, in
sequence order per chat, to one bounded queue that the application reads with
:meth:`ChatClient.messages` / :meth:`ChatClient.next_message`. A full queue stops the reader, so
the server's outbound queue fills and it may close with 4009 (slow consumer): the client then
reconnects and syncs, nothing is lost.

- After every ``ready`` the client sends ``sync_request`` with each known chat and its last
  released sequence (several frames if needed: a frame must fit ``limits.max_frame_bytes``). It
  also sends a ``sync_request`` without positions when it knows no chats, or, with
  ``discover_on_reconnect`` (the default), on every reconnect: a position list cannot name chats
  the user joined while disconnected. A ``resync`` frame triggers the same.
- A gap (a held message) that is still open ``gap_delay`` later (the missing one is usually just
  late) sends a ``sync_request`` for that chat from its last released sequence, unless an
  explicit sync of the chat is already running.
- ``sync_complete {chat_id, head}`` closes the gap for good when it answers a sync *with a
  position* (sync requests are answered in order, so the client pairs each ``sync_complete``
  with the oldest open sync of that chat): the server sent every message the user may see in
  ``(position, head]`` before it, so whatever is still missing up to ``head`` is invisible to the
  user (before joining, after removal) and is skipped. A position-less sync starts at the
  server's stored ack, which may lie beyond what this device received; it closes nothing, except
  for a chat first learned from it ("fresh"): that chat's baseline becomes its head. While a
  position-less sync covers a chat (until it answered for it, or went quiet for
  ``discovery_idle``), that chat gets no explicit sync, so that the answers stay distinguishable.

Acks
----
A message is *delivered* when the application takes it from the queue; the highest delivered
sequence per chat is acked at most every ``ack_interval`` (one ``ack`` per chat). Acks not
confirmed by ``acked`` are sent again after a reconnect.

Sends
-----
:meth:`ChatClient.send` (or :meth:`ChatClient.submit` for a future) keeps the send until its
``send_ack`` or a non-retriable ``error`` (:class:`~messaging.client.errors.SendRejected`). It is
written again, with the same ``client_message_id``, after every reconnect, after a retriable error
(the codes ``messaging.protocol.frames.ErrorCode.retriable`` names: after a backoff) and
when no answer came within ``send_ack_timeout``; retrying is safe (the server's idempotency).
After ``send_max_age`` (24 h) it fails with :class:`~messaging.client.errors.SendExpired`. A
caller that stops waiting does not cancel the send: its outcome still lands in the history.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from messaging.client.errors import (
    AuthRejected,
    ClientClosed,
    ClientError,
    SendExpired,
    SendRejected,
    SyncRejected,
)
from messaging.client.history import History, ReceivedRecord, SendOutcome, SendRecord, now_ms
from messaging.client.ordering import ReorderBuffer
from messaging.domain.model import Message
from messaging.protocol import frames
from messaging.protocol.frames import MAX_SYNC_CHATS, SUBPROTOCOL, CloseCode, ErrorCode

logger = logging.getLogger("messaging.client")

FATAL_CLOSE_CODES = frozenset({CloseCode.UNAUTHENTICATED, CloseCode.DEVICE_MISMATCH})
NO_CLOSE_FRAME = 1006
DEFAULT_MAX_FRAME_BYTES = 16 * 1024
_CLIENT_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.:\-]")

T = TypeVar("T")


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0")


@attrs.frozen(kw_only=True)
class ClientOptions:
    backoff_initial: float = attrs.field(default=0.1, validator=_positive)
    backoff_max: float = attrs.field(default=5.0, validator=_positive)
    backoff_factor: float = attrs.field(default=2.0, validator=_positive)
    backoff_jitter: float = 0.5
    """The delay is drawn uniformly from ``[d * (1 - jitter), d]``."""
    start_timeout: float | None = attrs.field(default=30.0, validator=_positive)
    """How long :meth:`ChatClient.start` waits for the first ``ready``."""
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    """TCP connect + upgrade + ``auth`` until ``ready``."""
    close_timeout: float = attrs.field(default=2.0, validator=_positive)
    ping_interval: float | None = attrs.field(default=20.0, validator=_positive)
    ping_timeout: float | None = attrs.field(default=20.0, validator=_positive)
    ack_interval: float = attrs.field(default=0.1, validator=_positive)
    keepalive_interval: float = attrs.field(default=20.0, validator=_positive)
    """A ``ping`` frame at least this often: the server closes a connection that sent no frame
    for its idle timeout (4010, 60 s by default; WebSocket-level pings are not frames)."""
    gap_delay: float = attrs.field(default=0.2, validator=_positive)
    sync_timeout: float = attrs.field(default=30.0, validator=_positive)
    """An explicit sync not completed after this long no longer holds back a gap sync."""
    discovery_idle: float = attrs.field(default=2.0, validator=_positive)
    """A position-less sync counts as running until no replay frame came for this long."""
    discover_on_reconnect: bool = True
    send_ack_timeout: float = attrs.field(default=30.0, validator=_positive)
    send_max_age: float = attrs.field(default=86_400.0, validator=_positive)
    queue_size: int = attrs.field(default=10_000, validator=_positive)
    reorder_capacity: int = attrs.field(default=10_000, validator=_positive)
    max_receive_bytes: int = attrs.field(default=2**20, validator=_positive)
    compression: bool = False
    offer_subprotocol: bool = True
    receive_buffer_bytes: int | None = attrs.field(default=None, validator=_positive)
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
class _Inbound:
    message: Message
    received_at_ms: int
    replay: bool

    @property
    def sequence(self) -> int:
        return self.message.sequence


_Delivery = tuple[Message, ReceivedRecord | None]


@attrs.define(eq=False)
class _SyncMarker:
    """An open sync of one chat *with a position*, oldest first (answers come in order)."""

    sent_at: float
    waiters: list[asyncio.Future[int]] = attrs.field(factory=list)


@attrs.define(eq=False)
class _Chat:
    chat_id: str
    buffer: ReorderBuffer[_Inbound]
    enqueued: int = 0
    """Highest sequence released to the queue (or skipped)."""
    consumed: int = 0
    """Highest sequence taken by the application."""
    ack_sent: int = 0
    ack_confirmed: int = 0
    markers: deque[_SyncMarker] = attrs.field(factory=deque)
    gap_due: float | None = None
    fresh: bool = False
    """First learned during a position-less sync: its baseline comes from that sync."""
    awaiting_discovery: bool = False
    """A position-less sync covers this chat and has not completed it yet."""
    removed: bool = False
    waiters: list[tuple[int, asyncio.Future[None]]] = attrs.field(factory=list)


@attrs.define(eq=False)
class _PendingSend:
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


class _ConnectFailed(Exception):
    def __init__(self, detail: str, close_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.close_code = close_code


def _close_info(exc: ConnectionClosed) -> tuple[int, str]:
    if exc.rcvd is not None:
        return exc.rcvd.code, exc.rcvd.reason
    return NO_CLOSE_FRAME, ""


def _text(frame: frames.ClientFrame) -> str:
    return frames.encode(frame).decode()


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


TokenSource = str | Callable[[], Awaitable[str]]


class ChatClient:
    """One device's real-time connection, kept alive across disconnects (see module docs)."""

    def __init__(
        self,
        url: str,
        token: TokenSource,
        device_id: str,
        *,
        options: ClientOptions | None = None,
        positions: Mapping[str, int] | None = None,
        history: History | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``url``: ``ws://host:port/v1/ws``. ``token``: the access token, or an async callable
        returning a fresh one before every connect. ``positions``: chats already delivered up to
        a sequence (e.g. ``last_acked_sequence`` from ``GET /v1/chats``)."""
        self.url = url
        self.device_id = device_id
        self.options = options or ClientOptions()
        self.history = history or History()
        self.history.device_id = device_id
        self.stats = ClientStats()
        self.user_id: str | None = None
        self.connection_id: str | None = None
        self.limits: dict[str, int] = {}
        self._token = token
        self._rng = rng or random.Random()
        self._chats: dict[str, _Chat] = {}
        self._pending: dict[str, _PendingSend] = {}
        self._queue: asyncio.Queue[_Delivery | None] = asyncio.Queue(self.options.queue_size)
        self._reading = asyncio.Event()
        self._reading.set()
        self._wake = asyncio.Event()
        self._next_due = 0.0
        self._ack_due: float | None = None
        self._last_keepalive = time.monotonic()
        self._ws: ClientConnection | None = None
        self._epoch = 0
        self._sync_all = False
        self._discovery_until: float | None = None
        self._discovery_waiters: list[asyncio.Future[None]] = []
        self._orphan_waiters: dict[str, list[asyncio.Future[int]]] = {}
        self._sync_retries: dict[str, tuple[float, list[asyncio.Future[int]]]] = {}
        """Chats whose sync the server answered with a retriable error: when to ask again."""
        self._sync_all_due: float | None = None
        self._sync_error_streak = 0
        self._ready_waiters: list[asyncio.Future[None]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._closed = False
        self._id_prefix = f"{_UNSAFE_ID_CHARS.sub('_', device_id)[:24]}-{uuid.uuid4().hex[:12]}"
        self._id_counter = 0
        for chat_id, sequence in (positions or {}).items():
            chat = self._chat(chat_id, delivered=sequence)
            chat.ack_sent = chat.ack_confirmed = sequence

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the background tasks and wait for the first ``ready``.

        Raises :class:`AuthRejected` (4001/4003), or ``TimeoutError`` after ``start_timeout``;
        the client is closed then (also when the caller cancels ``start``).
        """
        if self._supervisor is not None or self._closed:
            raise ClientError("a ChatClient can be started once")
        self._ticker = asyncio.create_task(self._tick_loop(), name=f"client-ticker-{self._id}")
        self._supervisor = asyncio.create_task(self._supervise(), name=f"client-conn-{self._id}")
        try:
            async with asyncio.timeout(self.options.start_timeout):
                await self.wait_ready()
        except BaseException:
            await self.close()
            raise

    async def __aenter__(self) -> ChatClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (code 1000), stop and await every task; idempotent.

        Pending sends fail with :class:`ClientClosed` (outcome ``abandoned`` in the history);
        messages already queued can still be read, then :meth:`next_message` raises.
        """
        if self._closed:
            return
        self._closed = True
        tasks = [task for task in (self._supervisor, self._ticker) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail(ClientClosed("the client was closed"))

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def failure(self) -> BaseException | None:
        """Why the client stopped (AuthRejected, ClientClosed), or None while it runs."""
        return self._failure

    async def wait_ready(self) -> None:
        """Wait until a connection is ready (at once if it is)."""
        self._raise_if_failed()
        if self._ws is not None:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ready_waiters.append(future)
        await self._wait(future, self._ready_waiters)

    # ------------------------------------------------------------ receiving

    async def next_message(self) -> Message:
        """The next message, in sequence order per chat; it counts as delivered (and is acked).

        Raises the client's failure (AuthRejected, ClientClosed) once the queue is empty.
        """
        if self._failure is not None and self._queue.empty():
            raise self._failure
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # wake the next reader too
            assert self._failure is not None
            raise self._failure
        message, record = item
        if record is not None:
            record.delivered_at_ms = now_ms()
        chat = self._chats.get(message.chat_id)
        if chat is not None and message.sequence > chat.consumed:
            chat.consumed = message.sequence
            if self._ack_due is None:
                self._ack_due = time.monotonic() + self.options.ack_interval
                self._schedule(self._ack_due)
        return message

    async def messages(self) -> AsyncIterator[Message]:
        """Every message, in sequence order per chat, until the client is closed (then it
        ends) or fails (then it raises). Use one consumer at a time."""
        while True:
            try:
                message = await self.next_message()
            except ClientClosed:
                return
            yield message

    def delivered_sequence(self, chat_id: str) -> int:
        """Highest sequence of ``chat_id`` released to the application's queue (or skipped)."""
        chat = self._chats.get(chat_id)
        return chat.enqueued if chat is not None else 0

    def known_chats(self) -> dict[str, int]:
        return {chat.chat_id: chat.enqueued for chat in self._chats.values()}

    async def wait_for(
        self,
        chat_id: str,
        sequence: int,
        timeout: float | None = 10.0,  # noqa: ASYNC109 (a test helper: a deadline is the point)
    ) -> None:
        """Wait until every message of ``chat_id`` up to ``sequence`` is in the queue (in order).

        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        self._raise_if_failed()
        chat = self._chat(chat_id)
        if chat.enqueued >= sequence:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (sequence, future)
        chat.waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await self._wait(future, None)
        finally:
            if entry in chat.waiters:
                chat.waiters.remove(entry)

    async def sync(self, chat_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Sync ``chat_ids`` (default: every known chat) and wait for their ``sync_complete``.

        Returns the head per chat. With no known chat, runs a position-less sync and returns
        once it went quiet (``discovery_idle``) with what it learned.
        """
        self._raise_if_failed()
        loop = asyncio.get_running_loop()
        ids = (
            list(dict.fromkeys(chat_ids))
            if chat_ids is not None
            else [chat.chat_id for chat in self._chats.values() if not chat.removed]
        )
        if not ids:
            done: asyncio.Future[None] = loop.create_future()
            self._discovery_waiters.append(done)
            self._sync_all = True
            self._schedule(0.0)
            await self._wait(done, self._discovery_waiters)
            return {chat.chat_id: chat.enqueued for chat in self._chats.values()}
        futures: dict[str, asyncio.Future[int]] = {}
        for chat_id in ids:
            chat = self._chat(chat_id)
            chat.removed = False
            futures[chat_id] = loop.create_future()
            futures[chat_id].add_done_callback(_mark_retrieved)
            self._orphan_waiters.setdefault(chat_id, []).append(futures[chat_id])
        self._schedule(0.0)
        return {chat_id: await future for chat_id, future in futures.items()}

    # ------------------------------------------------------------ sending

    def new_client_message_id(self) -> str:
        self._id_counter += 1
        return f"{self._id_prefix}-{self._id_counter}"

    def submit(
        self, chat_id: str, text: str, client_message_id: str | None = None
    ) -> asyncio.Future[SendResult]:
        """Queue a send; the future resolves with its :class:`SendResult` (see :meth:`send`)."""
        self._raise_if_failed()
        if not text:
            raise ValueError("text must not be empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text is not valid UTF-8 (lone surrogate)") from None
        cmid = client_message_id or self.new_client_message_id()
        if not _CLIENT_MESSAGE_ID.match(cmid):
            raise ValueError("client_message_id must be 1-64 of A-Za-z0-9_-.:")
        if cmid in self._pending:
            raise ValueError(f"client_message_id {cmid!r} is already being sent")
        frame = self._send_frame(chat_id, cmid, text)
        max_frame = self.limits.get("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES)
        if len(frame.encode()) > max_frame:
            raise ValueError(f"the send_message frame would exceed {max_frame} bytes")
        future: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_mark_retrieved)
        self._pending[cmid] = _PendingSend(
            chat_id=chat_id,
            client_message_id=cmid,
            text=text,
            future=future,
            record=self.history.send_requested(chat_id, cmid, text),
            created=time.monotonic(),
        )
        self._schedule(0.0)
        return future

    async def send(
        self, chat_id: str, text: str, client_message_id: str | None = None
    ) -> SendResult:
        """Send and wait for the ``send_ack``, across reconnects and retriable errors.

        Raises :class:`SendRejected` (non-retriable error), :class:`SendExpired`,
        :class:`AuthRejected` or :class:`ClientClosed`. Cancelling the caller does not cancel
        the send.
        """
        return await asyncio.shield(self.submit(chat_id, text, client_message_id))

    # ------------------------------------------------------------ test hooks

    def pause_reading(self) -> None:
        """Stop reading frames: the socket buffers fill and the server's outbound queue grows
        (it will close with 4009). A paused client does not notice a close either."""
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def drop_connection(self) -> None:
        """Abort the TCP connection at once, without a close frame (the client reconnects)."""
        if self._ws is not None:
            self._ws.transport.abort()

    # ------------------------------------------------------------ supervisor

    @property
    def _id(self) -> str:
        return self._id_prefix

    async def _supervise(self) -> None:
        attempt = 0
        try:
            while True:
                try:
                    ws, ready = await self._open()
                except _ConnectFailed as exc:
                    self.stats.connect_failures += 1
                    self.history.connection_event(
                        "connect_failed", close_code=exc.close_code, detail=exc.detail
                    )
                    logger.debug("connect failed: %s", exc.detail)
                else:
                    began = time.monotonic()
                    await self._serve(ws, ready)
                    if time.monotonic() - began >= self.options.backoff_max:
                        attempt = 0  # it was stable: a flapping server keeps backing off
                await asyncio.sleep(self.options.backoff(attempt, self._rng))
                attempt += 1
        except (AuthRejected, InvalidURI) as exc:
            self._fail(exc)
        except Exception as exc:
            logger.exception("client supervisor crashed")
            self._fail(exc)

    async def _token_value(self) -> str:
        if isinstance(self._token, str):
            return self._token
        return await self._token()

    async def _open(self) -> tuple[ClientConnection, frames.Ready]:
        self.stats.connect_attempts += 1
        ws: ClientConnection | None = None
        sock: socket.socket | None = None
        ready: frames.Ready | None = None
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                token = await self._token_value()
                sock = await self._small_buffer_socket()
                given: dict[str, Any] = {} if sock is None else {"sock": sock}
                ws = await connect(
                    self.url,
                    subprotocols=[Subprotocol(SUBPROTOCOL)]
                    if self.options.offer_subprotocol
                    else None,
                    compression="deflate" if self.options.compression else None,
                    proxy=None,
                    open_timeout=None,
                    ping_interval=self.options.ping_interval,
                    ping_timeout=self.options.ping_timeout,
                    close_timeout=self.options.close_timeout,
                    max_size=self.options.max_receive_bytes,
                    **given,
                )
                await ws.send(_text(frames.Auth(token=token, device_id=self.device_id)))
                raw = await ws.recv()
            try:
                frame = frames.decode_server_frame(raw)
            except msgspec.DecodeError:
                frame = None
            if not isinstance(frame, frames.Ready):
                raise _ConnectFailed(f"expected ready, got {str(raw)[:200]}")
            ready = frame
            return ws, ready
        except ConnectionClosed as exc:
            code, reason = _close_info(exc)
            if code in FATAL_CLOSE_CODES:
                self.history.connection_event("closed", close_code=code, detail=reason)
                raise AuthRejected(code, reason) from None
            raise _ConnectFailed(f"closed during auth: {code} {reason}", code) from None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise _ConnectFailed(repr(exc)) from None
        finally:
            if ready is None and ws is not None:
                ws.transport.abort()
            elif ws is None and sock is not None:
                sock.close()

    async def _small_buffer_socket(self) -> socket.socket | None:
        """A connected TCP socket with ``receive_buffer_bytes`` set before the connect (so the
        window scaling honours it), or None to let websockets connect."""
        size = self.options.receive_buffer_bytes
        if size is None:
            return None
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _serve(self, ws: ClientConnection, ready: frames.Ready) -> None:
        """Run one ready connection until it ends; raises AuthRejected on 4001/4003."""
        self.user_id = ready.user_id or self.user_id
        self.history.user_id = self.user_id
        self.connection_id = ready.connection_id or None
        self.limits = msgspec.structs.asdict(ready.limits)
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        self.history.connection_event("ready", connection_id=self.connection_id)
        self._ws = ws
        self._epoch += 1
        self._sync_all = True
        self._schedule(0.0)
        for waiter in self._ready_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._ready_waiters.clear()
        code, reason = NO_CLOSE_FRAME, ""
        try:
            await self._read_loop(ws)
        except ConnectionClosed as exc:
            code, reason = _close_info(exc)
        finally:
            self._end_connection()
            if self._closed:
                await self._close_handshake(ws)
                self.history.connection_event(
                    "closed", connection_id=self.connection_id, close_code=1000, detail="closed"
                )
            else:
                ws.transport.abort()
        self.stats.close_codes[code] += 1
        if code == CloseCode.SLOW_CONSUMER:
            self.stats.slow_consumer_disconnects += 1
        self.history.connection_event(
            "closed", connection_id=self.connection_id, close_code=code, detail=reason
        )
        logger.debug("connection %s closed: %s %s", self.connection_id, code, reason)
        if code in FATAL_CLOSE_CODES:
            raise AuthRejected(code, reason)

    async def _close_handshake(self, ws: ClientConnection) -> None:
        """Close with 1000, reading (and dropping) what is still in flight meanwhile: the
        server's close frame queues behind it, and unread frames stop the socket's reading."""

        async def discard() -> None:
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed:
                pass

        try:
            # Bounded here: ws.close() first waits for the write buffer to drain.
            async with asyncio.timeout(self.options.close_timeout):
                await asyncio.gather(ws.close(), discard())
        except TimeoutError:
            ws.transport.abort()

    def _end_connection(self) -> None:
        self._ws = None
        self._epoch += 1
        self._discovery_until = None
        self._sync_all = False
        self._sync_all_due = None
        for chat_id, (_, waiters) in self._sync_retries.items():
            self._orphan_waiters.setdefault(chat_id, []).extend(waiters)
        self._sync_retries.clear()
        for chat in self._chats.values():
            for marker in chat.markers:
                self._orphan_waiters.setdefault(chat.chat_id, []).extend(marker.waiters)
            chat.markers.clear()
            chat.gap_due = None
            chat.awaiting_discovery = False
            chat.ack_sent = chat.ack_confirmed
            if chat.consumed > chat.ack_confirmed:
                self._ack_due = 0.0
        for pending in self._pending.values():
            if pending.due is None:
                pending.due = 0.0

    async def _read_loop(self, ws: ClientConnection) -> None:
        while True:
            if not self._reading.is_set():
                await self._reading.wait()
            raw = await ws.recv()
            if isinstance(raw, bytes):
                self.stats.bad_frames += 1
                continue
            try:
                frame = frames.decode_server_frame(raw)
            except msgspec.DecodeError as exc:  # not JSON, or not a frame of protocol v1
                self.stats.bad_frames += 1
                logger.warning("bad frame from server (%s): %.200s", exc, raw)
                continue
            await self._handle(frame)

    async def _handle(self, frame: frames.ServerFrame) -> None:
        match frame:
            case frames.MessageFrame():
                await self._on_message(frame)
            case frames.SendAck():
                self._on_send_ack(frame)
            case frames.SyncComplete(chat_id=chat_id, head=head):
                await self._on_sync_complete(chat_id, head)
            case frames.Acked(chat_id=chat_id, last_acked_sequence=confirmed):
                self._on_acked(chat_id, confirmed)
            case frames.Error():
                self._on_error(frame)
            case frames.Resync():
                self.stats.resyncs += 1
                self._sync_all = True
                self._schedule(0.0)
            case frames.Pong() | frames.Ready():
                pass

    async def _on_message(self, frame: frames.MessageFrame) -> None:
        message = frame.to_message()
        replay = frame.replay
        if replay:
            self._touch_discovery()
        chat = self._chat(message.chat_id)
        chat.removed = False
        before = chat.buffer.duplicates
        released = chat.buffer.receive(_Inbound(message, now_ms(), replay))
        if chat.buffer.duplicates != before:
            self.stats.duplicates += 1
            self.history.duplicates[chat.chat_id] += 1
        await self._release(chat, released)

    async def _on_sync_complete(self, chat_id: str, head: int) -> None:
        self._touch_discovery()
        self._sync_error_streak = 0
        chat = self._chat(chat_id)
        # Explicit syncs are always sent before a position-less one, and no explicit sync of a
        # chat is sent while a position-less one covers it: an unmatched answer is the latter.
        marker = chat.markers.popleft() if chat.markers else None
        if marker is None:
            chat.awaiting_discovery = False
        if chat.chat_id in self._orphan_waiters:
            self._schedule(0.0)
        if marker is not None or chat.fresh:
            before = chat.buffer.delivered
            released = chat.buffer.skip_to(head)
            self.stats.skipped += max(0, chat.buffer.delivered - before - len(released))
            chat.fresh = False
            await self._release(chat, released)
        else:
            self._check_gap(chat)
        if marker is not None:
            for waiter in marker.waiters:
                if not waiter.done():
                    waiter.set_result(head)

    def _on_send_ack(self, frame: frames.SendAck) -> None:
        pending = self._pending.pop(frame.client_message_id, None)
        if pending is None:
            return  # the answer to a resend of a send already answered
        result = SendResult(
            chat_id=pending.chat_id,
            client_message_id=pending.client_message_id,
            sequence=frame.sequence,
            duplicate=frame.duplicate,
            created_at_ms=frame.created_at_ms,
            attempts=pending.record.attempts,
        )
        record = pending.record
        record.outcome = "acked"
        record.sequence = result.sequence
        record.duplicate = result.duplicate
        record.created_at_ms = result.created_at_ms
        record.finished_at_ms = now_ms()
        record.finished_mono = time.monotonic()
        if not pending.future.done():
            pending.future.set_result(result)

    def _on_error(self, frame: frames.Error) -> None:
        """An ``error`` frame, to what its ``ref`` names: a pending send, a chat the user is
        not (or no longer) in, or a sync to ask again."""
        self.history.errors[frame.code.value] += 1
        retriable = frame.retriable or frame.code.retriable
        ref = frame.ref or frames.ErrorRef()
        cmid = ref.client_message_id
        pending = self._pending.get(cmid) if cmid is not None else None
        advised = frame.retry_after_ms
        advised_s = advised / 1000 if advised is not None and 0 < advised <= 3_600_000 else 0
        if pending is not None:
            self._on_send_error(pending, frame, retriable=retriable, advised_s=advised_s)
        elif (
            frame.code in (ErrorCode.NOT_A_MEMBER, ErrorCode.NOT_FOUND) and ref.chat_id is not None
        ):
            self._on_chat_refused(ref.chat_id, frame)
        elif ref.sync and retriable:
            delay = max(advised_s, self.options.backoff(self._sync_error_streak, self._rng))
            self._sync_error_streak += 1
            self._retry_sync(ref, time.monotonic() + delay)
        else:
            logger.info(
                "error frame from server: %s %s (ref %s)", frame.code.value, frame.message, ref
            )

    def _on_send_error(
        self, pending: _PendingSend, frame: frames.Error, *, retriable: bool, advised_s: float
    ) -> None:
        """A pending send answered with an error: retried after a backoff (at least the
        advised delay), or failed with :class:`SendRejected`."""
        code = frame.code.value
        pending.record.errors.append(code)
        if retriable:
            delay = max(advised_s, self.options.backoff(pending.retries, self._rng))
            pending.due = time.monotonic() + delay
            pending.retries += 1
            self._schedule(pending.due)
        else:
            self._finish_send(pending, SendRejected(code, frame.message), outcome="rejected")

    def _on_chat_refused(self, chat_id: str, frame: frames.Error) -> None:
        """``not_a_member`` or ``not_found`` for a chat: it is removed, its syncs fail with
        :class:`SyncRejected`."""
        chat = self._chats.get(chat_id)
        failure = SyncRejected(chat_id, frame.code.value, frame.message)
        waiters = self._orphan_waiters.pop(chat_id, [])
        if chat is not None:
            chat.removed = True
            chat.gap_due = None
            chat.awaiting_discovery = False
            for marker in chat.markers:
                waiters.extend(marker.waiters)
            chat.markers.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(failure)

    def _retry_sync(self, ref: frames.ErrorRef, due: float) -> None:
        """A sync answered with a retriable error (``ref.sync``) instead of ``sync_complete``:
        its marker is released (answers come in request order, so it is the chat's oldest) and
        the sync is asked again at ``due``, keeping its waiters."""
        chat_ids: tuple[str, ...]
        if ref.chat_id is not None:
            chat_ids = (ref.chat_id,)
        elif ref.chat_ids is not None:
            chat_ids = ref.chat_ids
        else:  # a position-less sync failed before it named any chat
            self._sync_all_due = due
            self._schedule(due)
            return
        for chat_id in chat_ids:
            chat = self._chats.get(chat_id)
            if chat is None:
                continue
            waiters: list[asyncio.Future[int]] = []
            if chat.awaiting_discovery:  # the position-less sync failed on this chat
                chat.awaiting_discovery = False
            elif chat.markers:
                waiters = chat.markers.popleft().waiters
            else:
                continue
            _, earlier = self._sync_retries.get(chat.chat_id, (due, []))
            self._sync_retries[chat.chat_id] = (due, [*earlier, *waiters])
            self._schedule(due)

    # ------------------------------------------------------------ delivery

    def _chat(self, chat_id: str, *, delivered: int = 0) -> _Chat:
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = _Chat(
                chat_id=chat_id,
                buffer=ReorderBuffer(delivered, capacity=self.options.reorder_capacity),
                enqueued=delivered,
                consumed=delivered,
                fresh=self._discovery_active(),
            )
            self._chats[chat_id] = chat
        return chat

    async def _release(self, chat: _Chat, released: list[_Inbound]) -> None:
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

    def _check_gap(self, chat: _Chat) -> None:
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

    # ------------------------------------------------------------ ticker

    def _schedule(self, due: float) -> None:
        if due < self._next_due:
            self._next_due = due
        self._wake.set()

    async def _tick_loop(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            if now >= self._next_due:
                self._next_due = float("inf")
                await self._tick(now)
            delay = self._next_due - time.monotonic()
            if delay > 0:
                try:
                    async with asyncio.timeout(None if delay == float("inf") else delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _tick(self, now: float) -> None:
        """Do everything due; re-schedules whatever is due later (via ``_schedule``)."""
        self._expire_sends(now)
        if self._ws is None:
            return
        epoch = self._epoch
        if self._discovery_until is not None:
            if now >= self._discovery_until:
                self._end_discovery()
            else:
                self._schedule(self._discovery_until)
        self._due_sync_retries(now)
        if self._sync_all:
            self._sync_all = False
            if not await self._sync_everything(epoch):
                return
        if not await self._gap_syncs(now, epoch):
            return
        if not await self._write_sends(now, epoch):
            return
        await self._flush_acks(now, epoch)
        await self._keepalive(now, epoch)

    def _due_sync_retries(self, now: float) -> None:
        """Syncs refused with a retriable error come back as requests once their delay ends."""
        if self._sync_all_due is not None:
            if now >= self._sync_all_due:
                self._sync_all_due = None
                self._sync_all = True
            else:
                self._schedule(self._sync_all_due)
        for chat_id, (due, waiters) in list(self._sync_retries.items()):
            if due <= now:
                del self._sync_retries[chat_id]
                self._orphan_waiters.setdefault(chat_id, []).extend(waiters)
            else:
                self._schedule(due)

    async def _keepalive(self, now: float, epoch: int) -> None:
        interval = self.options.keepalive_interval
        if now - self._last_keepalive >= interval:
            if not await self._write(epoch, frames.Ping()):
                return
            self._last_keepalive = now
        self._schedule(self._last_keepalive + interval)

    def _expire_sends(self, now: float) -> None:
        max_age = self.options.send_max_age
        for pending in list(self._pending.values()):
            age = now - pending.created
            if age >= max_age:
                self._finish_send(
                    pending, SendExpired(pending.client_message_id, age), outcome="expired"
                )
            else:
                self._schedule(pending.created + max_age)

    def _end_discovery(self) -> None:
        self._discovery_until = None
        for waiter in self._discovery_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._discovery_waiters.clear()
        for chat in self._chats.values():
            chat.awaiting_discovery = False
            self._check_gap(chat)
        self._schedule(0.0)

    async def _write(self, epoch: int, frame: frames.ClientFrame | str) -> bool:
        """Write one frame on the current connection; False when it is gone or changed."""
        ws = self._ws
        if ws is None or epoch != self._epoch:
            return False
        try:
            await ws.send(frame if isinstance(frame, str) else _text(frame))
        except ConnectionClosed:
            return False
        return epoch == self._epoch

    async def _sync_everything(self, epoch: int) -> bool:
        discover = (
            not self._chats or self.options.discover_on_reconnect or bool(self._discovery_waiters)
        )
        # A chat only known from an unfinished position-less sync waits for the next one (an
        # explicit sync from 0 would replay its whole history). A chat that a running
        # position-less sync still covers gets no explicit sync before that one answered for it,
        # or the answers could not be told apart (``_on_sync_complete``); ``_gap_syncs`` sends
        # the ones asked for by ``sync()`` later.
        discovering = self._discovery_active()
        explicit = [
            chat
            for chat in self._chats.values()
            if not (discovering and chat.awaiting_discovery)
            and (
                chat.chat_id in self._orphan_waiters
                or (not chat.removed and not (discover and chat.fresh and chat.enqueued == 0))
            )
        ]
        if not await self._sync_chats(explicit, epoch):
            return False
        if discover:
            for chat in self._chats.values():
                chat.awaiting_discovery = not chat.removed
            self._discovery_until = time.monotonic() + self.options.discovery_idle
            self._schedule(self._discovery_until)
            self.stats.sync_requests += 1
            return await self._write(epoch, frames.SyncRequest())
        return True

    async def _sync_chats(self, chats: list[_Chat], epoch: int) -> bool:
        """Explicit sync_request frames for ``chats``, each frame within max_frame_bytes."""
        max_frame = self.limits.get("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES)
        budget = max_frame - 64
        entries: list[frames.SyncPosition] = []
        size = 0
        for chat in chats:
            marker = _SyncMarker(time.monotonic(), self._orphan_waiters.pop(chat.chat_id, []))
            chat.markers.append(marker)
            chat.gap_due = None
            entry = frames.SyncPosition(
                chat_id=chat.chat_id, last_acked_sequence=chat.buffer.delivered
            )
            entry_size = len(frames.encode(entry))
            if entries and (size + entry_size + 1 > budget or len(entries) >= MAX_SYNC_CHATS):
                if not await self._write_sync(entries, epoch):
                    return False
                entries, size = [], 0
            entries.append(entry)
            size += entry_size + 1
        if entries:
            return await self._write_sync(entries, epoch)
        return True

    async def _write_sync(self, entries: list[frames.SyncPosition], epoch: int) -> bool:
        self.stats.sync_requests += 1
        return await self._write(epoch, frames.SyncRequest(chats=tuple(entries)))

    async def _gap_syncs(self, now: float, epoch: int) -> bool:
        """Sync the chats whose gap outlived ``gap_delay``, and those ``sync()`` asked for."""
        discovering = self._discovery_active()
        due: list[_Chat] = []
        gaps = 0
        for chat in self._chats.values():
            requested = chat.chat_id in self._orphan_waiters
            if chat.gap_due is not None and chat.gap_due > now:
                self._schedule(chat.gap_due)
                if not requested:
                    continue
            gap_ready = chat.gap_due is not None and chat.gap_due <= now
            if not (requested or gap_ready):
                continue
            if discovering and chat.awaiting_discovery:
                continue  # its completion or the end of the discovery re-checks it
            if gap_ready:
                chat.gap_due = None
            if requested:
                due.append(chat)
                gaps += chat.buffer.has_gap
            elif (
                not chat.removed
                and chat.buffer.has_gap
                and not any(
                    now - marker.sent_at < self.options.sync_timeout for marker in chat.markers
                )
            ):
                due.append(chat)
                gaps += 1
        if not due:
            return True
        self.stats.gap_syncs += gaps
        return await self._sync_chats(due, epoch)

    async def _write_sends(self, now: float, epoch: int) -> bool:
        timeout = self.options.send_ack_timeout
        for pending in list(self._pending.values()):
            if pending.future.done():
                continue
            if pending.due is None:
                if now < pending.sent_at + timeout:
                    self._schedule(pending.sent_at + timeout)
                    continue
            elif pending.due > now:
                self._schedule(pending.due)
                continue
            if pending.record.attempts:
                self.stats.resends += 1
            pending.record.attempts += 1
            pending.due = None
            pending.sent_at = now
            self._schedule(now + timeout)
            frame = self._send_frame(pending.chat_id, pending.client_message_id, pending.text)
            if not await self._write(epoch, frame):
                return False
        return True

    @staticmethod
    def _send_frame(chat_id: str, client_message_id: str, text: str) -> str:
        return _text(
            frames.SendMessage(chat_id=chat_id, client_message_id=client_message_id, text=text)
        )

    def _on_acked(self, chat_id: str, confirmed: int) -> None:
        chat = self._chat(chat_id)
        chat.ack_confirmed = max(chat.ack_confirmed, confirmed)
        self.history.acked_received(chat.chat_id, confirmed)

    async def _flush_acks(self, now: float, epoch: int) -> None:
        if self._ack_due is None:
            return
        if now < self._ack_due:
            self._schedule(self._ack_due)
            return
        self._ack_due = None
        for chat in list(self._chats.values()):
            if chat.consumed > chat.ack_sent and not chat.removed:
                chat.ack_sent = chat.consumed
                self.history.ack_sent(chat.chat_id, chat.consumed)
                ack = frames.Ack(chat_id=chat.chat_id, sequence=chat.consumed)
                if not await self._write(epoch, ack):
                    return

    # ------------------------------------------------------------ failures and waiting

    def _finish_send(
        self, pending: _PendingSend, error: BaseException, *, outcome: SendOutcome
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
                _mark_retrieved(waiter)
        self._ready_waiters.clear()
        self._discovery_waiters.clear()
        self._orphan_waiters.clear()
        if self._queue.empty():
            self._queue.put_nowait(None)

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
