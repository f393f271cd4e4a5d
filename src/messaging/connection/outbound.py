"""A connection's outbound queue: bounded in frames and in bytes (ADR 0008). Frames are the
UTF-8 bytes of their JSON (``messaging.protocol.frames.encode``), so the byte limit is exact.

Two ways in:

* ``offer`` (live pushes from fanout) never waits: when the frame does not fit, it returns False
  and the caller disconnects the slow consumer. A live push must never stall fanout for others.
* ``put_paced`` (catch-up replay) waits until the queue has drained below half of both limits,
  so a large sync proceeds at the client's reading speed and always leaves room for live pushes.

Two ways out: ``pop`` (the connection's writer drains it without waiting) and ``get`` (waits for
a frame). An idle connection's queue holds no container and no waiter at all: the frame deque
exists only while frames are queued, and a waiter future only while someone waits (an empty
``deque`` is 760 bytes and an ``asyncio.Event`` another 760, times thousands of idle sockets).
"""

from __future__ import annotations

import asyncio
from collections import deque


class OutboundQueue:
    """One consumer and at most one paced producer at a time (a connection has one writer and
    one sync worker); live offers come from anywhere and never wait."""

    __slots__ = ("_bytes", "_drained", "_frames", "_readable", "max_bytes", "max_messages")

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._frames: deque[bytes] | None = None
        self._bytes = 0
        self._readable: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._frames) if self._frames is not None else 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def _fits(self, size: int) -> bool:
        return len(self) < self.max_messages and self._bytes + size <= self.max_bytes

    def _below_low_water(self) -> bool:
        return len(self) <= self.max_messages // 2 and self._bytes <= self.max_bytes // 2

    def _append(self, frame: bytes, size: int) -> None:
        if self._frames is None:
            self._frames = deque()
        self._frames.append(frame)
        self._bytes += size
        _wake(self._readable)
        self._readable = None

    def offer(self, frame: bytes) -> bool:
        size = len(frame)
        if not self._fits(size):
            return False
        self._append(frame, size)
        return True

    async def put_paced(self, frame: bytes) -> None:
        while not self._below_low_water():
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        self._append(frame, len(frame))

    def pop(self) -> bytes | None:
        """The oldest frame, or None when the queue is empty; never waits."""
        frames = self._frames
        if not frames:
            return None
        frame = frames.popleft()
        if not frames:
            self._frames = None  # an idle queue holds no deque
        self._bytes -= len(frame)
        if self._drained is not None and self._below_low_water():
            _wake(self._drained)
            self._drained = None
        return frame

    async def get(self) -> bytes:
        """The oldest frame, waiting for one."""
        while (frame := self.pop()) is None:
            if self._readable is None or self._readable.done():
                self._readable = asyncio.get_running_loop().create_future()
            await self._readable
        return frame


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
