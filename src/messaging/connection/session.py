"""One authenticated WebSocket connection: its identity, queue and closing state."""

from __future__ import annotations

import asyncio
import enum
import uuid

from messaging.connection.outbound import OutboundQueue, encode_frame
from messaging.metrics import Metrics
from messaging.protocol.frames import CloseCode


class State(enum.Enum):
    LIVE = "live"
    CLOSING = "closing"


class Connection:
    def __init__(
        self, user_id: str, device_id: str, queue: OutboundQueue, metrics: Metrics
    ) -> None:
        self.connection_id = f"c_{uuid.uuid4().hex[:16]}"
        self.user_id = user_id
        self.device_id = device_id
        self.queue = queue
        self.state = State.LIVE
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self.closing = asyncio.Event()
        self._metrics = metrics

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
        return True

    def push_json(self, frame: dict[str, object]) -> bool:
        return self.push(encode_frame(frame), str(frame.get("type", "?")))

    def close(self, code: CloseCode, reason: str) -> None:
        """Ask the connection's tasks to stop and close the socket with ``code`` (first wins)."""
        if self.state is State.LIVE:
            self.state = State.CLOSING
            self.close_code = code
            self.close_reason = reason
            self.closing.set()
