"""The real-time client: protocol v1 over WebSocket (docs/protocol.md, "Client rules").

Lifecycle and tasks
-------------------
A :class:`ChatClient` owns exactly two background tasks, created by :meth:`ChatClient.start`
(or ``async with``) and cancelled and awaited by :meth:`ChatClient.close` (also when ``start``
fails half way): the **supervisor**, which connects, authenticates, reads frames and reconnects,
and the **ticker**, which does every timed or outgoing thing (syncs, resends, acks, expiries).
The supervisor never writes to the socket, so a server that blocks writing to a slow client can
never dead-lock against it.

Parts
-----
After aiokafka's split of its consumer (ADR 0021), :class:`ChatClient` is the supervisor
(connect, backoff, read and dispatch frames, keepalive, the ticker) over three parts that share
its state (``state.py``, :class:`~messaging.client.state.ClientCore`): sends (``sends.py``),
syncs (``syncs.py``) and delivery with acks (``acks.py``).

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
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from messaging.client.acks import Acks
from messaging.client.errors import AuthRejected, ClientClosed, ClientError
from messaging.client.history import History
from messaging.client.sends import Sends
from messaging.client.state import (
    DEFAULT_MAX_FRAME_BYTES,
    FATAL_CLOSE_CODES,
    NO_CLOSE_FRAME,
    UNSAFE_ID_CHARS,
    Chat,
    ClientOptions,
    ClientStats,
    ConnectFailed,
    Delivered,
    PendingSend,
    SendResult,
    TokenSource,
    close_info,
    text_of,
)
from messaging.client.syncs import Syncs
from messaging.protocol import frames
from messaging.protocol.frames import SUBPROTOCOL, CloseCode, ErrorCode

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "FATAL_CLOSE_CODES",
    "NO_CLOSE_FRAME",
    "ChatClient",
    "ClientOptions",
    "ClientStats",
    "SendResult",
    "TokenSource",
]

logger = logging.getLogger("messaging.client")


class ChatClient(Sends, Syncs, Acks):
    """One device's real-time connection, kept alive across disconnects (see module docs).

    This class is the supervisor (connect, authenticate, read and dispatch frames, reconnect
    with backoff, keepalive, the ticker); sends, syncs and delivery with acks are its parts
    (:class:`~messaging.client.sends.Sends`, :class:`~messaging.client.syncs.Syncs`,
    :class:`~messaging.client.acks.Acks`) over the state they share
    (:class:`~messaging.client.state.ClientCore`)."""

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
        self._chats: dict[str, Chat] = {}
        self._pending: dict[str, PendingSend] = {}
        self._queue: asyncio.Queue[Delivered | None] = asyncio.Queue(self.options.queue_size)
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
        self._id_prefix = f"{UNSAFE_ID_CHARS.sub('_', device_id)[:24]}-{uuid.uuid4().hex[:12]}"
        self._id_counter = 0
        for chat_id, sequence in (positions or {}).items():
            chat = self._chat(chat_id, delivered=sequence)
            chat.ack_sent = chat.ack_confirmed = sequence

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

    @property
    def _id(self) -> str:
        return self._id_prefix

    async def _supervise(self) -> None:
        attempt = 0
        try:
            while True:
                try:
                    ws, ready = await self._open()
                except ConnectFailed as exc:
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
                sock = await _small_buffer_socket(self.url, self.options.receive_buffer_bytes)
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
                await ws.send(text_of(frames.Auth(token=token, device_id=self.device_id)))
                raw = await ws.recv()
            try:
                frame = frames.decode_server_frame(raw)
            except msgspec.DecodeError:
                frame = None
            if not isinstance(frame, frames.Ready):
                raise ConnectFailed(f"expected ready, got {str(raw)[:200]}")
            ready = frame
            return ws, ready
        except ConnectionClosed as exc:
            code, reason = close_info(exc)
            if code in FATAL_CLOSE_CODES:
                self.history.connection_event("closed", close_code=code, detail=reason)
                raise AuthRejected(code, reason) from None
            raise ConnectFailed(f"closed during auth: {code} {reason}", code) from None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise ConnectFailed(repr(exc)) from None
        finally:
            if ready is None and ws is not None:
                ws.transport.abort()
            elif ws is None and sock is not None:
                sock.close()

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
            code, reason = close_info(exc)
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

    async def _keepalive(self, now: float, epoch: int) -> None:
        interval = self.options.keepalive_interval
        if now - self._last_keepalive >= interval:
            if not await self._write(epoch, frames.Ping()):
                return
            self._last_keepalive = now
        self._schedule(self._last_keepalive + interval)


async def _small_buffer_socket(url: str, size: int | None) -> socket.socket | None:
    """A connected TCP socket with ``receive_buffer_bytes`` set before the connect (so the
    window scaling honours it), or None to let websockets connect."""
    if size is None:
        return None
    parts = urlsplit(url)
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
