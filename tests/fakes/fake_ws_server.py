"""A small protocol-v1 server (docs/protocol.md) for testing ``messaging.client``, with faults.

It speaks protocol v1 through its one typed definition, ``messaging.protocol.frames``: client
frames are decoded with ``decode_client_frame`` (the gateway's decoder), server frames are that
module's structs and builders, error codes and their ``retriable`` are ``ErrorCode``'s, refs are
``ErrorRef``s. What is left here is the fake's in-memory chat store and its fault knobs. In
memory, on 127.0.0.1 and port 0 (``url`` once started).

- Auth: the token ``good:<user>:<device>`` is valid for ``device``; another device -> close
  4003; anything else -> close 4001. Nothing but ``auth`` is accepted before it.
- Chats: :meth:`FakeServer.create_chat` (members join at the current head, so they see later
  messages), :meth:`FakeServer.add_member`, :meth:`FakeServer.remove_member`. Sequences are
  1..head per chat. Sends are idempotent by (user, client_message_id).
- Every connection has a bounded outbound queue (``outbound_limit`` frames) drained by a writer
  task. A live push that finds it full closes the connection with 4009 (slow consumer); replies
  and replays wait for room instead (paced), as the real gateway does.
- ``sync_request`` frames are answered in the order received (one at a time per connection).

Fault knobs (attributes, set them between steps): ``drop_before_send_ack`` (the next N sends are
stored and pushed, then the sender's connection is aborted before its ``send_ack``),
``hold_pushes`` + :meth:`FakeServer.release_held` (reorder and duplicate live pushes),
``skip_pushes`` (the next N live pushes go nowhere: a gap), ``fail_sends`` (answer the next
sends with these error codes instead), ``fail_syncs`` (answer the next sync requests with these
error codes instead, ``ref.sync`` set as the real gateway does), ``ignore_sends`` (never
answer a send),
:meth:`FakeServer.close_connections` (close with a code), :meth:`FakeServer.send_resync`.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time
from collections import Counter
from typing import Any, Literal

import attrs
import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from messaging.domain.model import Message
from messaging.protocol import frames as f
from messaging.protocol.frames import ErrorCode

READY_LIMITS = f.Limits(
    max_frame_bytes=16384,
    outbound_queue_messages=1000,
    outbound_queue_bytes=1048576,
    sync_page_size=200,
    idle_timeout_ms=60000,
)


@attrs.define
class FakeChat:
    chat_id: str
    members: dict[str, int]
    """user -> joined_seq (sees sequence > joined_seq)."""
    removed: dict[str, int] = attrs.field(factory=dict)
    """user -> removed_seq (sees nothing after it)."""
    messages: list[Message] = attrs.field(factory=list)

    @property
    def head(self) -> int:
        return len(self.messages)

    def visible_range(self, user_id: str) -> tuple[int, int] | None:
        """(joined_seq, last visible sequence) or None when never a member."""
        if user_id in self.members:
            return self.members[user_id], self.head
        return None

    def is_member(self, user_id: str) -> bool:
        return user_id in self.members and user_id not in self.removed


class FakeConnection:
    def __init__(self, server: FakeServer, ws: ServerConnection, user_id: str, device_id: str):
        self.server = server
        self.ws = ws
        self.user_id = user_id
        self.device_id = device_id
        self.connection_id = f"c_{next(server._ids)}"
        self.outbound: asyncio.Queue[bytes] = asyncio.Queue(server.outbound_limit)
        self.closing = False
        self.writer = asyncio.create_task(self._write_loop())

    async def _write_loop(self) -> None:
        try:
            while True:
                frame = await self.outbound.get()
                await self.ws.send(frame, text=True)
        except ConnectionClosed:
            self.closing = True

    def push(self, frame: f.ServerFrame) -> None:
        """A live push: never waits; a full queue is a slow consumer (4009)."""
        if self.closing:
            return
        try:
            self.outbound.put_nowait(f.encode(frame))
        except asyncio.QueueFull:
            self.server.slow_consumer_closes += 1
            self.server._spawn(self.close(f.CloseCode.SLOW_CONSUMER, "slow consumer"))

    async def reply(self, frame: f.ServerFrame) -> None:
        """A reply or a replayed message: waits for room in the queue (or the connection's end)."""
        if self.closing or self.writer.done():
            return
        data = f.encode(frame)
        try:
            self.outbound.put_nowait(data)
            return
        except asyncio.QueueFull:
            pass
        put = asyncio.ensure_future(self.outbound.put(data))
        try:
            await asyncio.wait({put, self.writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            put.cancel()

    async def close(self, code: int, reason: str = "") -> None:
        if self.closing:
            return
        self.closing = True
        try:
            # close() waits for the write buffer to drain first: bound it.
            async with asyncio.timeout(self.server.close_timeout):
                await self.ws.close(code, reason)
        except TimeoutError:
            self.ws.transport.abort()

    def abort(self) -> None:
        self.closing = True
        self.ws.transport.abort()


class FakeServer:
    def __init__(
        self,
        *,
        outbound_limit: int = 1000,
        close_timeout: float = 5.0,
        send_buffer: int | None = None,
    ) -> None:
        """``send_buffer``: SO_SNDBUF of the connections (small: a slow reader shows up fast)."""
        self.outbound_limit = outbound_limit
        self.send_buffer = send_buffer
        self.close_timeout = close_timeout
        self.chats: dict[str, FakeChat] = {}
        self.acks: dict[tuple[str, str], int] = {}
        self.idempotency: dict[tuple[str, str], Message] = {}
        self.connections: list[FakeConnection] = []
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        # observations
        self.connection_attempts = 0
        self.auth_rejections: Counter[int] = Counter()
        self.frames: list[tuple[str, dict[str, Any]]] = []
        """(user_id, frame) for every valid frame received after auth, as the client wrote it."""
        self.slow_consumer_closes = 0
        # fault knobs
        self.drop_before_send_ack = 0
        self.hold_pushes = False
        self.held: list[tuple[FakeConnection, f.ServerFrame]] = []
        self.skip_pushes = 0
        self.fail_sends: list[str] = []
        """Error codes (``ErrorCode`` values) to answer the next sends with."""
        self.fail_syncs: list[str] = []
        self.ignore_sends = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> FakeServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.send_buffer is not None:  # accepted sockets inherit it (Linux)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        sock.bind(("127.0.0.1", 0))
        self._server = await serve(
            self._handler,
            sock=sock,
            select_subprotocol=_select_subprotocol,
            compression=None,
            ping_interval=None,
            close_timeout=self.close_timeout,
        )
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> FakeServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}{f.WS_PATH}"

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ data

    def create_chat(self, members: list[str], chat_id: str | None = None) -> str:
        chat_id = chat_id or f"g_{next(self._ids):032x}"
        self.chats[chat_id] = FakeChat(chat_id, dict.fromkeys(members, 0))
        return chat_id

    def add_member(self, chat_id: str, user_id: str) -> None:
        chat = self.chats[chat_id]
        chat.members[user_id] = chat.head
        chat.removed.pop(user_id, None)

    def remove_member(self, chat_id: str, user_id: str) -> None:
        chat = self.chats[chat_id]
        chat.removed[user_id] = chat.head

    def sequences(self, chat_id: str) -> list[int]:
        return [message.sequence for message in self.chats[chat_id].messages]

    def _append(self, chat: FakeChat, sender: str, device: str, cmid: str, text: str) -> Message:
        message = Message(
            chat_id=chat.chat_id,
            sequence=chat.head + 1,
            sender_id=sender,
            sender_device=device,
            client_message_id=cmid,
            text=text,
            created_at_ms=time.time_ns() // 1_000_000,
        )
        chat.messages.append(message)
        self.idempotency[(sender, cmid)] = message
        return message

    def post(self, chat_id: str, sender_id: str, text: str, *, device: str = "srv") -> Message:
        """Store a message as if ``sender_id`` had sent it from another device, and push it."""
        chat = self.chats[chat_id]
        message = self._append(chat, sender_id, device, f"srv-{next(self._ids)}", text)
        self._push(chat, message)
        return message

    def _push(self, chat: FakeChat, message: Message) -> None:
        if self.skip_pushes > 0:
            self.skip_pushes -= 1
            return
        frame = f.message(message)
        for conn in list(self.connections):
            if chat.is_member(conn.user_id) and message.sequence > chat.members[conn.user_id]:
                if self.hold_pushes:
                    self.held.append((conn, frame))
                else:
                    conn.push(frame)

    def release_held(
        self, order: Literal["reverse", "shuffle"] = "reverse", *, duplicate: bool = True
    ) -> int:
        """Push the held frames in another order (and each twice); returns how many were sent."""
        held, self.held = self.held, []
        self.hold_pushes = False
        if duplicate:
            held = held + held
        if order == "reverse":
            held.reverse()
        else:
            random.Random(7).shuffle(held)
        for conn, frame in held:
            conn.push(frame)
        return len(held)

    # ------------------------------------------------------------ faults

    async def close_connections(self, code: int, user_id: str | None = None) -> None:
        conns = [c for c in self.connections if user_id in (None, c.user_id)]
        await asyncio.gather(*(conn.close(code, "test") for conn in conns))

    async def send_resync(self, user_id: str | None = None) -> None:
        for conn in list(self.connections):
            if user_id in (None, conn.user_id):
                await conn.reply(f.resync("routing_lost"))

    # ------------------------------------------------------------ protocol

    async def _handler(self, ws: ServerConnection) -> None:
        self.connection_attempts += 1
        try:
            async with asyncio.timeout(5):
                raw = await ws.recv()
            frame = f.decode_client_frame(raw)
        except (TimeoutError, ConnectionClosed, f.FrameError):
            await ws.close(f.CloseCode.AUTH_TIMEOUT)
            return
        if not isinstance(frame, f.Auth):
            await ws.close(f.CloseCode.UNAUTHENTICATED, "auth first")
            self.auth_rejections[f.CloseCode.UNAUTHENTICATED] += 1
            return
        parts = frame.token.split(":")
        if len(parts) != 3 or parts[0] != "good":
            self.auth_rejections[f.CloseCode.UNAUTHENTICATED] += 1
            await ws.close(f.CloseCode.UNAUTHENTICATED, "bad token")
            return
        if parts[2] != frame.device_id:
            self.auth_rejections[f.CloseCode.DEVICE_MISMATCH] += 1
            await ws.close(f.CloseCode.DEVICE_MISMATCH, "token of another device")
            return
        conn = FakeConnection(self, ws, parts[1], frame.device_id)
        self.connections.append(conn)
        try:
            await conn.reply(
                f.ready(
                    user_id=conn.user_id,
                    device_id=conn.device_id,
                    connection_id=conn.connection_id,
                    server_time_ms=time.time_ns() // 1_000_000,
                    limits=READY_LIMITS,
                )
            )
            async for raw in ws:
                await self._on_frame(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            self.connections.remove(conn)
            conn.closing = True
            conn.writer.cancel()
            await asyncio.gather(conn.writer, return_exceptions=True)

    async def _on_frame(self, conn: FakeConnection, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            await conn.reply(f.error(ErrorCode.BINARY_NOT_SUPPORTED, "text frames only"))
            return
        try:
            frame = f.decode_client_frame(raw)
        except f.FrameError as exc:
            await conn.reply(f.error(exc.code, exc.message, ref=exc.ref))
            return
        self.frames.append((conn.user_id, msgspec.json.decode(raw)))
        if isinstance(frame, f.SendMessage):
            await self._on_send(conn, frame)
        elif isinstance(frame, f.Ack):
            await self._on_ack(conn, frame)
        elif isinstance(frame, f.SyncRequest):
            await self._on_sync(conn, frame)
        elif isinstance(frame, f.Ping):
            await conn.reply(f.pong(frame.id, time.time_ns() // 1_000_000))
        else:
            await conn.reply(f.error(ErrorCode.INVALID_FRAME, "already authenticated"))

    async def _on_send(self, conn: FakeConnection, frame: f.SendMessage) -> None:
        ref = f.send_ref(frame.chat_id, frame.client_message_id)
        if self.ignore_sends:
            return
        if self.fail_sends:
            code = ErrorCode(self.fail_sends.pop(0))
            await conn.reply(f.error(code, "injected", ref=ref))
            return
        chat = self.chats.get(frame.chat_id)
        if chat is None:
            await conn.reply(f.error(ErrorCode.NOT_FOUND, "no such chat", ref=ref))
            return
        existing = self.idempotency.get((conn.user_id, frame.client_message_id))
        if existing is not None:
            if existing.chat_id != frame.chat_id or existing.text != frame.text:
                await conn.reply(f.error(ErrorCode.IDEMPOTENCY_KEY_REUSED, "reused", ref=ref))
            else:
                await conn.reply(f.send_ack(existing, duplicate=True))
            return
        if not chat.is_member(conn.user_id):
            await conn.reply(f.error(ErrorCode.NOT_A_MEMBER, "not a member", ref=ref))
            return
        message = self._append(
            chat, conn.user_id, conn.device_id, frame.client_message_id, frame.text
        )
        self._push(chat, message)
        if self.drop_before_send_ack > 0:
            self.drop_before_send_ack -= 1
            conn.abort()
            return
        await conn.reply(f.send_ack(message, duplicate=False))

    async def _on_ack(self, conn: FakeConnection, frame: f.Ack) -> None:
        chat = self.chats.get(frame.chat_id)
        if chat is None or conn.user_id not in chat.members:
            ref = f.chat_ref(frame.chat_id)
            await conn.reply(f.error(ErrorCode.NOT_A_MEMBER, "not a member", ref=ref))
            return
        if frame.sequence > chat.head:
            ref = f.chat_ref(frame.chat_id)
            await conn.reply(f.error(ErrorCode.INVALID_INPUT, "ack past the head", ref=ref))
            return
        key = (conn.user_id, frame.chat_id)
        self.acks[key] = max(self.acks.get(key, 0), frame.sequence)
        await conn.reply(f.acked(frame.chat_id, self.acks[key]))

    async def _on_sync(self, conn: FakeConnection, frame: f.SyncRequest) -> None:
        if self.fail_syncs:
            code = ErrorCode(self.fail_syncs.pop(0))
            await conn.reply(f.error(code, "injected", ref=f.sync_ref(frame)))
            return
        if frame.chats is None:
            positions = [
                (chat.chat_id, self.acks.get((conn.user_id, chat.chat_id), 0))
                for chat in self.chats.values()
                if conn.user_id in chat.members
            ]
        else:
            positions = [(p.chat_id, p.last_acked_sequence) for p in frame.chats]
        for chat_id, after in positions:
            chat = self.chats.get(chat_id)
            visible = chat.visible_range(conn.user_id) if chat is not None else None
            if chat is None or visible is None:
                ref = f.sync_chat_ref(chat_id)
                await conn.reply(f.error(ErrorCode.NOT_A_MEMBER, "not a member", ref=ref))
                continue
            joined, _ = visible
            last = chat.removed.get(conn.user_id, chat.head)
            for message in chat.messages[max(after, joined) : last]:
                await conn.reply(f.message(message, replay=True))
            await conn.reply(f.sync_complete(chat_id, last))


def _select_subprotocol(connection: ServerConnection, subprotocols: Any) -> Subprotocol | None:
    return Subprotocol(f.SUBPROTOCOL) if f.SUBPROTOCOL in subprotocols else None
