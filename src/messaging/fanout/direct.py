"""The direct fanout path beside the log (ADR 0033, amending ADR 0006).

Live delivery normally waits for Kafka: persist, publish, consume, fan out. While that path is
degraded (the outbox relay's publishes fail or stall, or this process's fanout consumer cannot
poll, keeps failing a batch or is stuck in one), a message this process has just persisted is
also fanned out directly, through the same :class:`FanoutService`: to this process's own sockets
at once (no Redis needed), then, from a second bounded queue, to the processes holding the
other members' sockets over the Redis hand-off. A stalled Redis therefore never holds up the
local part. Once the log is back, the sweeper publishes the same messages and the consumer fans
them out again; a connection is not queued a message twice (``LocalConnections`` remembers what
it queued recently), and clients drop duplicates by sequence anyway.

Order: a directly delivered message can overtake an earlier one still on its way through the
log; the client sees the gap and syncs it (ADR 0011), so nothing is lost, only a sync spent.
Both queues are bounded: what does not fit waits for the log (and the clients' syncs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from messaging.domain.model import Message
from messaging.fanout.service import FanoutService, Resolved
from messaging.metrics import Metrics

log = logging.getLogger(__name__)

BATCH = 100


class DirectFanout:
    def __init__(
        self,
        service: FanoutService,
        degraded: Callable[[], bool],
        metrics: Metrics,
        *,
        queue_size: int = 10_000,
        remote_batches: int = 100,
    ) -> None:
        self._service = service
        self._degraded = degraded
        self._metrics = metrics
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=queue_size)
        self._remote: asyncio.Queue[Resolved] = asyncio.Queue(maxsize=remote_batches)

    @property
    def active(self) -> bool:
        return self._degraded()

    def submit(self, message: Message) -> None:
        """A just-persisted message (ingest's sink): fanned out directly while degraded."""
        if self._degraded():
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
        """Fan out what is queued until cancelled: locally here, to other processes in a
        task of its own."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._hand_off_loop(), name="direct-fanout-handoff")
            while True:
                batch = [await self._queue.get()]
                while len(batch) < BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                await self.deliver(batch)

    async def deliver(self, batch: Sequence[Message]) -> None:
        try:
            resolved = await self._service.resolve(batch)
        except Exception:
            self._metrics.fanout_direct.labels("failed").inc(len(batch))
            log.warning("direct fan-out of %d message(s) failed", len(batch), exc_info=True)
            return
        self._service.deliver_locally(resolved)
        self._metrics.fanout_direct.labels("local").inc(len(batch))
        try:
            self._remote.put_nowait(resolved)
        except asyncio.QueueFull:
            self._metrics.fanout_direct.labels("dropped").inc(len(batch))

    async def _hand_off_loop(self) -> None:
        while True:
            resolved = await self._remote.get()
            count = sum(len(m) for m in resolved.by_chat.values())
            try:
                await self._service.hand_off(resolved)
            except Exception:
                self._metrics.fanout_direct.labels("failed").inc(count)
                log.warning("direct hand-off of %d message(s) failed", count, exc_info=True)
                continue
            self._metrics.fanout_direct.labels("handed_off").inc(count)
