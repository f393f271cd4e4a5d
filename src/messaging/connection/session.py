"""One authenticated WebSocket connection: its identity, outbound queue, closing state and the
tasks that serve it.

Memory per idle connection is what limits how many sockets one process holds (the benchmark's
target is 10,000 at 30 KB or less each), so an idle connection holds no task of its own besides
its reader: the writer and the two command lanes (:class:`Lane`) exist only while they have
work, and the handler waits on one future instead of an ``asyncio.Event`` and a task. Every task
is started by :meth:`Connection._spawn` and so owned by the connection: :meth:`Connection.stop`
refuses new ones and :meth:`Connection.shutdown` cancels and awaits those that run.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

import attrs
from starlette.websockets import WebSocketDisconnect

from messaging.connection.outbound import OutboundQueue
from messaging.metrics import Metrics
from messaging.protocol import frames
from messaging.protocol.frames import CloseCode

log = logging.getLogger(__name__)

T = TypeVar("T")

DELIVERED_CHATS = 256
"""How many chats a connection remembers what it was sent of (see ``Connection.saw``)."""


@attrs.frozen
class Lanes:
    """What a connection's two lanes do and how many items may wait in each: one object, made
    by the gateway, shared by all its connections (a connection holds a reference, not a copy)."""

    pending_commands: int
    command: Callable[[Connection, Any], Awaitable[None]]
    """Handles a ``send_message`` or an ``ack``."""
    pending_syncs: int
    sync: Callable[[Connection, Any], Awaitable[None]]
    """Answers a ``sync_request`` (``connection/replay.py``)."""


class State(enum.Enum):
    LIVE = "live"
    CLOSING = "closing"


class Connection:
    __slots__ = (
        "_lanes",
        "_metrics",
        "_reader",
        "_send",
        "_stopped",
        "_writer",
        "bad_frames",
        "close_code",
        "close_reason",
        "commands",
        "connection_id",
        "counted",
        "delivered",
        "device_id",
        "last_seen",
        "queue",
        "state",
        "syncs",
        "user_id",
    )

    def __init__(
        self,
        user_id: str,
        device_id: str,
        queue: OutboundQueue,
        metrics: Metrics,
        send: Callable[[str], Awaitable[None]],
        *,
        now: float = 0.0,
        lanes: Lanes | None = None,
    ) -> None:
        self.connection_id = f"c_{uuid.uuid4().hex[:16]}"
        self.user_id = user_id
        self.device_id = device_id
        self.queue = queue
        self.state = State.LIVE
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self.last_seen = now
        self.counted = True
        """Holds a slot of the per-user connection limit (until closed or superseded)."""
        """When the last frame arrived (the gateway's monotonic clock), for the idle sweep."""
        self.bad_frames: deque[float] | None = None
        """When recent invalid frames arrived (created by the first one)."""
        self.delivered: dict[str, int] | None = None
        """Per chat, the highest sequence this connection was sent (live, replayed, its own
        send, or a ``sync_complete`` head): the user may see all of it, so an ack up to it
        needs no membership check (created by the first delivery, at most
        ``DELIVERED_CHATS`` chats)."""
        self.commands: Lane[Any] | None = None
        self.syncs: Lane[Any] | None = None
        self._lanes = lanes
        self._metrics = metrics
        self._send = send
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._stopped: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ what it was sent

    def saw(self, chat_id: str, sequence: int) -> None:
        """Remember that this connection was sent ``chat_id`` up to ``sequence``."""
        delivered = self.delivered
        if delivered is None:
            delivered = self.delivered = {}
        if sequence > delivered.get(chat_id, 0):
            if chat_id not in delivered and len(delivered) >= DELIVERED_CHATS:
                del delivered[next(iter(delivered))]  # the chat that came first
            delivered[chat_id] = sequence

    def was_sent(self, chat_id: str, sequence: int) -> bool:
        """True when this connection was sent ``chat_id`` at or past ``sequence`` (> 0)."""
        return 0 < sequence <= (self.delivered or {}).get(chat_id, 0)

    # ------------------------------------------------------------------ outbound frames

    def push(self, frame: bytes, kind: str) -> bool:
        """Queue a live frame; a full queue disconnects this slow consumer. False if dropped."""
        if self.state is not State.LIVE:
            return False
        self._metrics.outbound_queue_depth.observe(len(self.queue))
        if not self.queue.offer(frame):
            self._metrics.slow_consumer_disconnects.inc()
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: outbound queue full")
            return False
        self._metrics.frames_out.labels(kind).inc()
        self._start_writer()
        return True

    def push_frame(self, frame: frames.ServerFrame) -> bool:
        """Queue a frame built here (an answer, ``ready``, ``resync``) as :meth:`push` does."""
        return self.push(frames.encode(frame), frames.kind(frame))

    async def put_paced(self, frame: bytes) -> None:
        """Queue a replayed frame once the queue has drained below half (ADR 0008)."""
        await self.queue.put_paced(frame)
        self._start_writer()

    def _start_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = self._spawn(self._write())

    async def _write(self) -> None:
        """Drain the queue to the socket, then end: the next frame starts a new writer. The
        send waits while the transport is above its high-water mark (a peer not reading)."""
        queue = self.queue
        while (frame := queue.pop()) is not None:
            await self._send(frame.decode())

    # ------------------------------------------------------------------ tasks

    def start_reader(self, reader: Coroutine[Any, Any, None]) -> None:
        self._reader = self._spawn(reader)

    def put_command(self, command: object) -> bool:
        """Queue a send or an ack on the command lane (created by the first one); False when
        ``pending_commands`` already wait."""
        commands = self.commands
        if commands is None:
            assert self._lanes is not None, "a connection made without lanes"
            commands = self.commands = self.lane(self._lanes.pending_commands, self._lanes.command)
        return commands.put(command)

    def put_sync(self, request: object) -> bool:
        """Queue a sync request on the sync lane (created by the first one); False when
        ``pending_syncs`` already wait."""
        syncs = self.syncs
        if syncs is None:
            assert self._lanes is not None, "a connection made without lanes"
            syncs = self.syncs = self.lane(self._lanes.pending_syncs, self._lanes.sync)
        return syncs.put(request)

    def lane(self, limit: int, handle: Callable[[Connection, T], Awaitable[None]]) -> Lane[T]:
        """A lane whose items ``handle(self, item)`` handles, in order, one at a time."""
        return Lane(self, limit, handle)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Start one of this connection's tasks; none once it is closing."""
        if self.state is not State.LIVE:
            work.close()
            return None
        task = asyncio.create_task(work)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        # Forget a finished task (it holds its coroutine): an idle connection holds none.
        # An idle lane is dropped too: the next item creates a new one.
        if task is self._writer:
            self._writer = None
        elif self.commands is not None and task is self.commands.task:
            self.commands.task = None
            if not self.commands:
                self.commands = None
        elif self.syncs is not None and task is self.syncs.task:
            self.syncs.task = None
            if not self.syncs:
                self.syncs = None
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        if isinstance(error, WebSocketDisconnect | OSError):
            self.stop()  # the peer is gone
            return
        log.error("connection task failed", exc_info=error)
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def stopped(self) -> asyncio.Future[None]:
        """Done once :meth:`close` or :meth:`stop` was called (the handler awaits it)."""
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_future()
            if self.state is not State.LIVE:
                self._stopped.set_result(None)
        return self._stopped

    async def shutdown(self) -> None:
        """Stop, then cancel and await every task of this connection."""
        self.stop()
        tasks = [
            task
            for task in (
                self._reader,
                self._writer,
                self.commands.task if self.commands is not None else None,
                self.syncs.task if self.syncs is not None else None,
            )
            if task is not None and not task.done()
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ closing

    def close(self, code: CloseCode, reason: str) -> None:
        """Ask the connection's tasks to stop and close the socket with ``code`` (first wins)."""
        if self.state is State.LIVE:
            self.close_code = code
            self.close_reason = reason
            self.stop()

    def stop(self) -> None:
        """Stop serving without a close code of ours (the peer is gone, or shutting down)."""
        self.state = State.CLOSING
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)


class Lane(Generic[T]):
    """Items handled one at a time in the order put, by a task of the connection that exists
    only while there is work: the ``put`` that finds the lane idle starts it, and it ends when
    the lane is empty. At most ``limit`` items wait (the one being handled is not counted)."""

    __slots__ = ("_connection", "_handle", "_items", "_limit", "task")

    def __init__(
        self,
        connection: Connection,
        limit: int,
        handle: Callable[[Connection, T], Awaitable[None]],
    ) -> None:
        self._connection = connection
        self._limit = limit
        self._handle = handle
        self._items: deque[T] | None = None
        self.task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0

    def put(self, item: T) -> bool:
        """Queue ``item``; False (and nothing queued) when ``limit`` items already wait."""
        if self._items is None:
            self._items = deque()
        elif len(self._items) >= self._limit:
            return False
        self._items.append(item)
        if self.task is None or self.task.done():
            self.task = self._connection._spawn(self._run())
        return True

    async def _run(self) -> None:
        items = self._items
        while items:
            await self._handle(self._connection, items.popleft())
        # No await between the emptiness check and the end of the task: a put from now on
        # finds the task done and starts a new one.
        self._items = None
