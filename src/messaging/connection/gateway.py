"""The WebSocket gateway: protocol v1 (docs/protocol.md).

A connection is served by its handler (the ASGI task) and a reader task (parses frames, answers
pings, hands commands on). Everything else runs only while it has work, as tasks owned by the
connection (``session.py``): the writer (drains the outbound queue to the socket), the command
lane (sends, answered in the order received; acks are handed to the durability plane's coalescer
without waiting, their answers follow when the coalesced write lands) and the sync lane (paced
catch-up replay, ``replay.py``, requests answered in order); the connection owns its lanes and the
gateway gives it, once for all connections, what they do
(:class:`~messaging.connection.session.Lanes`). Idle timeouts are enforced by one sweep for the
whole process (:meth:`Gateway.sweep_idle`, a background loop of the composition root), not a task
per socket.
Whoever decides to close sets the close code on the connection; the handler then stops the
connection's tasks, cancels and awaits them, and closes the socket with that code.

Abuse limits (docs/adr/0010-abuse-limits-and-origin-checks.md), all per process: a browser
``Origin`` other than this host or an allowed origin is refused before the handshake (HTTP 403);
open sockets per client address and per user are bounded (close 4029); sends and sync requests
per user are token buckets (error ``rate_limited`` with ``retry_after_ms``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.websockets import WebSocket, WebSocketDisconnect

from messaging.connection.answers import (
    RETRY_AFTER_UNAVAILABLE_SECONDS,
    domain_error,
    ms,
    rate_limited,
)
from messaging.connection.config import GatewayConfig
from messaging.connection.outbound import OutboundQueue
from messaging.connection.registry import LocalConnections
from messaging.connection.replay import SyncReplay
from messaging.connection.session import Connection, Lanes, State
from messaging.domain.errors import (
    DeviceMismatch,
    LimitExceeded,
    MessagingError,
    StoreUnavailable,
    Unauthenticated,
)
from messaging.domain.limits import Counter, KeyedBuckets
from messaging.metrics import Metrics
from messaging.protocol import frames
from messaging.protocol.chat import ConversationReader, DeliveryAckSink, MessageIngest
from messaging.protocol.delivery import RouteRegistry
from messaging.protocol.frames import CloseCode, ErrorCode, FrameError
from messaging.protocol.identity import Principal, SessionChecker, TokenVerifier

log = logging.getLogger(__name__)

Command = frames.SendMessage | frames.Ack


class Gateway:
    def __init__(
        self,
        *,
        tokens: TokenVerifier,
        sessions: SessionChecker,
        ingest: MessageIngest,
        reader: ConversationReader,
        acks: DeliveryAckSink,
        routes: RouteRegistry,
        local: LocalConnections,
        config: GatewayConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tokens = tokens
        self._sessions = sessions
        self._ingest = ingest
        self._reader = reader
        self._acks = acks
        self._routes = routes
        self._local = local
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self._handlers: set[asyncio.Task[None]] = set()
        self._send_buckets = KeyedBuckets(config.sends, monotonic)
        self._sync_buckets = KeyedBuckets(config.syncs, monotonic)
        self._per_user = Counter(config.connections_per_user)
        self._per_address = Counter(config.connections_per_address)
        self._lanes = Lanes(
            pending_commands=config.pending_commands,
            command=self._work,
            pending_syncs=config.pending_syncs,
            sync=SyncReplay(
                reader=reader,
                metrics=metrics,
                page_size=config.sync_page_size,
                page_bytes=config.sync_page_bytes,
                replayed=local.replayed,
            ).answer,
        )

    # ------------------------------------------------------------------ lifecycle

    async def drain(self, timeout_seconds: float) -> None:
        """Graceful shutdown: close every socket with 1001 (going away), wait for handlers."""
        for connection in self._local.all():
            connection.close(CloseCode.GOING_AWAY, "server shutting down")
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=timeout_seconds)

    async def sweep_idle(self) -> None:
        """Close with 4010 every connection that sent no frame for the idle timeout, checking
        every quarter of it (at most every 5 s). One loop for the whole process, run by the
        composition root's background tasks (an idle socket costs no task of its own)."""
        idle = self._config.idle_timeout_seconds
        while True:
            await asyncio.sleep(min(idle / 4, 5.0))
            self.close_idle()

    def close_idle(self) -> int:
        """One pass of :meth:`sweep_idle`; returns how many connections it closed."""
        idle = self._config.idle_timeout_seconds
        oldest = self._monotonic() - idle
        closed = 0
        for connection in self._local.all():
            if connection.last_seen < oldest and connection.state is State.LIVE:
                connection.close(CloseCode.IDLE_TIMEOUT, f"nothing received for {idle:g}s")
                closed += 1
        return closed

    # ------------------------------------------------------------------ one connection

    async def handle(self, websocket: WebSocket) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._handle(websocket)
        finally:
            self._handlers.discard(task)

    async def _handle(self, websocket: WebSocket) -> None:
        if not self._origin_allowed(websocket):
            self._metrics.limit_rejections.labels("origin").inc()
            # Before the handshake: the server answers HTTP 403 and no socket opens.
            await websocket.close(code=int(CloseCode.POLICY_VIOLATION))
            return
        address = websocket.client.host if websocket.client else "unknown"
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(
            subprotocol=frames.SUBPROTOCOL if frames.SUBPROTOCOL in offered else None
        )
        if not self._per_address.acquire(address):
            self._metrics.limit_rejections.labels("connections_per_address").inc()
            limit = self._per_address.limit
            await self._close(
                websocket,
                CloseCode.TOO_MANY_CONNECTIONS,
                f"at most {limit} open connections per client address",
            )
            return
        try:
            principal = await self._authenticate(websocket)
            if principal is None:
                return
            self._supersede(principal)
            if not self._per_user.acquire(principal.user_id):
                self._metrics.limit_rejections.labels("connections_per_user").inc()
                limit = self._per_user.limit
                await self._close(
                    websocket,
                    CloseCode.TOO_MANY_CONNECTIONS,
                    f"at most {limit} open connections per user",
                )
                return
            await self._run(websocket, principal)
        finally:
            self._per_address.release(address)

    def _supersede(self, principal: Principal) -> None:
        """A new connection of a device replaces its older ones (ADR 0034): each is closed with
        4004 and stops counting against the per-user limit now, not when its socket is found
        dead (a half-open one would hold its slot until its pings time out)."""
        for old in self._local.of_device(principal.user_id, principal.device_id):
            if old.counted:
                old.counted = False
                self._per_user.release(principal.user_id)
            self._metrics.superseded.inc()
            old.close(CloseCode.SUPERSEDED, "replaced by a newer connection of this device")

    def _origin_allowed(self, websocket: WebSocket) -> bool:
        """Cross-site WebSocket hijacking guard: a browser always sends ``Origin``; it must be
        this server's own host or an allowed origin. Clients that are not browsers send none."""
        origin = websocket.headers.get("origin")
        if origin is None:
            return True
        origin = origin.strip().lower().rstrip("/")
        if origin in self._config.allowed_origins:
            return True
        host = websocket.headers.get("host", "").strip().lower()
        return bool(host) and urlsplit(origin).netloc == host

    async def _run(self, websocket: WebSocket, principal: Principal) -> None:
        connection = Connection(
            principal.user_id,
            principal.device_id,
            OutboundQueue(self._config.outbound_queue_messages, self._config.outbound_queue_bytes),
            self._metrics,
            websocket.send_text,
            now=self._monotonic(),
            lanes=self._lanes,
        )
        # `ready` is the first frame queued, before the connection can receive live pushes
        # (registering it and announcing its route lets fanout find it): no chat data before
        # `ready`. A message fanned out in between is not lost: the client syncs after `ready`.
        connection.push_frame(
            frames.ready(
                user_id=principal.user_id,
                device_id=principal.device_id,
                connection_id=connection.connection_id,
                server_time_ms=int(self._clock() * 1000),
                limits=frames.Limits(
                    max_frame_bytes=self._config.max_frame_bytes,
                    outbound_queue_messages=self._config.outbound_queue_messages,
                    outbound_queue_bytes=self._config.outbound_queue_bytes,
                    sync_page_size=self._config.sync_page_size,
                    idle_timeout_ms=int(self._config.idle_timeout_seconds * 1000),
                ),
            )
        )
        self._local.add(connection)
        try:
            await self._routes.announce(connection.user_id)
            connection.start_reader(self._read(websocket, connection))
            await connection.stopped()
        finally:
            if connection.counted:  # else released when a newer connection superseded it
                connection.counted = False
                self._per_user.release(connection.user_id)
            await connection.shutdown()
            self._local.remove(connection)
            await self._routes.withdraw(connection.user_id)
        if connection.close_code is not None:
            await self._close(websocket, connection.close_code, connection.close_reason)

    async def _close(self, websocket: WebSocket, code: CloseCode, reason: str) -> None:
        self._metrics.ws_closes.labels(str(int(code))).inc()
        try:
            async with asyncio.timeout(self._config.close_timeout_seconds):
                await websocket.close(code=int(code), reason=reason)
        except (TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
            pass  # the peer is gone or not reading; the transport's keepalive ends it

    async def _authenticate(self, websocket: WebSocket) -> Principal | None:
        try:
            async with asyncio.timeout(self._config.auth_timeout_seconds):
                message = await websocket.receive()
        except TimeoutError:
            await self._close(websocket, CloseCode.AUTH_TIMEOUT, "no auth frame in time")
            return None
        if message["type"] == "websocket.disconnect":
            return None
        try:
            frame: frames.ClientFrame | None = frames.decode_client_frame(message.get("text") or "")
        except FrameError:
            frame = None
        if not isinstance(frame, frames.Auth):
            await self._close(websocket, CloseCode.UNAUTHENTICATED, "the first frame must be auth")
            return None
        try:
            principal = self._tokens.verify_for_device(frame.token, frame.device_id)
            await self._sessions.check_session(principal)
        except DeviceMismatch:
            await self._close(websocket, CloseCode.DEVICE_MISMATCH, "token is for another device")
            return None
        except Unauthenticated as exc:
            await self._close(websocket, CloseCode.UNAUTHENTICATED, exc.message[:120])
            return None
        except MessagingError:
            log.warning("session check failed", exc_info=True)
            await self._close(websocket, CloseCode.INTERNAL_ERROR, "try again")
            return None
        return principal

    # ------------------------------------------------------------------ tasks

    def _reject(
        self,
        connection: Connection,
        code: ErrorCode,
        text: str,
        ref: frames.ErrorRef | None = None,
    ) -> None:
        """An error frame for an invalid frame; too many of them close the connection (4000)."""
        connection.push_frame(frames.error(code, text, ref=ref))
        now = self._monotonic()
        bad = connection.bad_frames
        if bad is None:
            bad = connection.bad_frames = deque()
        bad.append(now)
        while bad and bad[0] < now - self._config.bad_frames_window_seconds:
            bad.popleft()
        if len(bad) > self._config.bad_frames_allowed:
            connection.close(CloseCode.PROTOCOL_ABUSE, "too many invalid frames")

    async def _read(self, websocket: WebSocket, connection: Connection) -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                connection.stop()
                return
            connection.last_seen = self._monotonic()
            text = message.get("text")
            if text is None:
                self._reject(
                    connection, ErrorCode.BINARY_NOT_SUPPORTED, "frames are JSON text frames"
                )
                continue
            limit = self._config.max_frame_bytes
            if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
                self._metrics.limit_rejections.labels("frame_bytes").inc()
                self._reject(
                    connection, ErrorCode.FRAME_TOO_LARGE, f"frames are at most {limit} bytes"
                )
                continue
            try:
                frame = frames.decode_client_frame(text)
            except FrameError as exc:
                self._reject(connection, exc.code, exc.message, exc.ref)
                continue
            kind = type(frame).__name__
            self._metrics.frames_in.labels(kind).inc()
            if isinstance(frame, frames.Ping):
                connection.push_frame(frames.pong(frame.id, int(self._clock() * 1000)))
            elif isinstance(frame, frames.Auth):
                self._reject(connection, ErrorCode.INVALID_FRAME, "already authenticated")
            elif isinstance(frame, frames.SyncRequest):
                # Over the limit, the sync lane answers it with an error in its turn: sync
                # answers stay in request order, which is how clients pair them.
                wait = self._sync_buckets.take(connection.user_id)
                if not connection.put_sync((frame, wait)):
                    connection.close(CloseCode.PROTOCOL_ABUSE, "too many sync requests in flight")
            else:
                if isinstance(frame, frames.SendMessage):
                    wait = self._send_buckets.take(connection.user_id)
                    if wait > 0:
                        rate_limited(
                            connection, self._metrics, "sends", "messages", _ref(frame), wait
                        )
                        continue
                if not connection.put_command((frame, self._monotonic())):
                    self._metrics.limit_rejections.labels("commands_in_flight").inc()
                    connection.push_frame(
                        frames.error(
                            ErrorCode.RATE_LIMITED,
                            "too many frames in flight; wait for answers",
                            ref=_ref(frame),
                            retry_after_ms=ms(RETRY_AFTER_UNAVAILABLE_SECONDS),
                        )
                    )

    async def _work(self, connection: Connection, item: tuple[Command, float]) -> None:
        """One send or ack, in its turn on the connection's command lane (with when it
        arrived)."""
        command, arrived = item
        try:
            if isinstance(command, frames.SendMessage):
                await self._send(connection, command, arrived)
            else:
                self._ack(connection, command)
        except MessagingError as exc:
            if isinstance(exc, LimitExceeded):
                self._metrics.limit_rejections.labels(exc.limit).inc()
            connection.push_frame(domain_error(exc, _ref(command)))

    def _ack(self, connection: Connection, command: frames.Ack) -> None:
        """Hand the ack over and return at once: its ``acked`` (or error) is pushed when the
        coalesced write lands (ADR 0025), so an ack never holds up the sends behind it. Up to
        what this connection was sent, the user may see everything: no visibility reads."""

        def reply(result: int | MessagingError) -> None:
            if isinstance(result, MessagingError):
                connection.push_frame(domain_error(result, _ref(command)))
            else:
                connection.push_frame(frames.acked(command.chat_id, result))

        self._acks.submit(
            connection.user_id,
            command.chat_id,
            command.sequence,
            delivered=connection.was_sent(command.chat_id, command.sequence),
            reply=reply,
        )

    async def _send(
        self, connection: Connection, command: frames.SendMessage, arrived: float
    ) -> None:
        """Store one send, answered within the send deadline of its ARRIVAL (ADR 0034): the
        time it waited behind this connection's earlier sends counts."""
        started = self._monotonic()
        deadline = self._config.send_deadline_seconds
        try:
            try:
                async with asyncio.timeout(max(0.0, arrived + deadline - started)):
                    result = await self._ingest.send(
                        sender_id=connection.user_id,
                        sender_device=connection.device_id,
                        chat_id=command.chat_id,
                        client_message_id=command.client_message_id,
                        text=command.text,
                    )
            except TimeoutError:
                raise StoreUnavailable(
                    f"the message store did not store the send within {deadline:g}s of its "
                    "arrival; retry with the same client_message_id"
                ) from None
        except MessagingError as exc:
            self._metrics.sends.labels(exc.code).inc()
            raise
        self._metrics.send_latency.observe(self._monotonic() - started)
        self._metrics.sends.labels("duplicate" if result.duplicate else "stored").inc()
        connection.push_frame(frames.send_ack(result.message, duplicate=result.duplicate))
        connection.saw(result.message.chat_id, result.message.sequence)


def _ref(command: Command) -> frames.ErrorRef:
    if isinstance(command, frames.SendMessage):
        return frames.send_ref(command.chat_id, command.client_message_id)
    return frames.chat_ref(command.chat_id)
