"""The direct fanout path beside the log (ADR 0033, amending ADR 0006).

Live delivery normally waits for Kafka: persist, publish, consume, fan out. While that path is
degraded (the outbox relay's publishes fail or stall, or this process's fanout consumer cannot
poll or keeps failing a batch), a message this process has just persisted is also fanned out
directly, through the same :class:`FanoutService`: to this process's own sockets first (no Redis
needed), then to the processes holding the other members' sockets over the Redis hand-off. Once
the log is back, the sweeper publishes the same messages and the consumer fans them out again;
a connection is not queued a message twice (``LocalConnections`` remembers what it queued
recently), and clients drop duplicates by sequence anyway.

Order: a directly delivered message can overtake an earlier one still on its way through the
log; the client sees the gap and syncs it (ADR 0011), so nothing is lost, only a sync spent.

After a direct fan-out fails (Redis away: its local part was delivered, the hand-offs were not)
the path stays on for :data:`HOLD_SECONDS`, so that later messages are at least delivered to
this process's sockets at once. The queue is bounded: what does not fit waits for the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from messaging.domain.model import Message
from messaging.fanout.service import FanoutService
from messaging.metrics import Metrics

log = logging.getLogger(__name__)

BATCH = 100
HOLD_SECONDS = 5.0


class DirectFanout:
    def __init__(
        self,
        service: FanoutService,
        degraded: Callable[[], bool],
        metrics: Metrics,
        *,
        queue_size: int = 10_000,
        hold_seconds: float = HOLD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._service = service
        self._degraded = degraded
        self._metrics = metrics
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=queue_size)
        self._hold = hold_seconds
        self._clock = clock
        self._hold_until = float("-inf")

    @property
    def active(self) -> bool:
        return self._clock() < self._hold_until or self._degraded()

    def submit(self, message: Message) -> None:
        """A just-persisted message (ingest's sink): fanned out directly while degraded."""
        if self.active:
            self._offer((message,))

    def unpublished(self, messages: Sequence[Message]) -> None:
        """Messages whose publish failed: fanned out directly whatever the state."""
        self._offer(messages)

    def _offer(self, messages: Sequence[Message]) -> None:
        for message in messages:
            try:
                self._queue.put_nowait(message)
            except asyncio.QueueFull:
                self._metrics.fanout_direct.labels("dropped").inc()

    async def run(self) -> None:
        """Fan out what is queued until cancelled."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self.fan_out(batch)

    async def fan_out(self, batch: Sequence[Message]) -> None:
        try:
            await self._service.fan_out(batch)
        except Exception:
            self._hold_until = self._clock() + self._hold
            self._metrics.fanout_direct.labels("failed").inc(len(batch))
            log.warning("direct fan-out of %d message(s) failed", len(batch), exc_info=True)
            return
        self._metrics.fanout_direct.labels("delivered").inc(len(batch))
