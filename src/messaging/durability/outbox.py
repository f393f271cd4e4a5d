"""Publish after persist, with a repair path (ADR 0006).

Every append writes an outbox entry in the same transaction as the message. The relay then:

* **publishes** what this process persisted, in order, as soon as it can (``submit`` is
  non-blocking into a bounded queue; when the queue is full the entry simply waits for the
  sweeper), and clears the entries once Kafka has acknowledged them;
* **sweeps**: every ``sweep_interval`` it reads the entries older than ``repair_after`` (left by a
  process that died between persist and publish, or by a failed publish), publishes those
  messages and clears them.

So a message acknowledged to its sender reaches Kafka within about ``repair_after +
sweep_interval`` (defaults 2 s + 1 s) even if its process dies. Several processes may sweep the
same entry: the message is then published twice, which at-least-once delivery already allows
(clients drop duplicates by sequence).

While publishing fails (Kafka unreachable), ``publishing_fails`` says so and the messages of each
failed direct publish go to ``on_unpublished``: the composition root gives them to the direct
fanout path (ADR 0033), so live delivery does not wait for the log. The outbox entries stay:
the sweeper still publishes them once Kafka is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from messaging.domain.model import Message
from messaging.durability.ports import MessagePublisher, MessageStore, Outbox, OutboxEntry
from messaging.metrics import Metrics

log = logging.getLogger(__name__)
BATCH = 100
STALLED_SECONDS = 1.0
"""A publish still in flight after this long counts as failing (Kafka's own timeout is 10 s)."""


class OutboxRelay:
    def __init__(
        self,
        store: MessageStore,
        outbox: Outbox,
        publisher: MessagePublisher,
        metrics: Metrics,
        *,
        queue_size: int = 10_000,
        repair_after_seconds: float = 2.0,
        sweep_interval_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
        on_unpublished: Callable[[Sequence[Message]], None] = lambda _: None,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._publisher = publisher
        self._metrics = metrics
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=queue_size)
        self._repair_after = repair_after_seconds
        self._sweep_interval = sweep_interval_seconds
        self._clock = clock
        self.dropped = 0
        self._on_unpublished = on_unpublished
        self._failed = False
        self._publishing_since: dict[str, float] = {}
        """Per path (direct, sweep): when its publish in flight started."""

    def submit(self, message: Message) -> None:
        """Hand a just-persisted message to the publisher; never blocks the send path."""
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1  # its outbox entry stays; the sweeper publishes it

    @property
    def publishing_fails(self) -> bool:
        """True from a failed publish until the next successful one, and while a publish has
        been in flight for more than :data:`STALLED_SECONDS`."""
        now = time.monotonic()
        return self._failed or any(
            now - since > STALLED_SECONDS for since in self._publishing_since.values()
        )

    async def run(self) -> None:
        """Publish and sweep until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._publish_loop(), name="outbox-publish")
            group.create_task(self._sweep_loop(), name="outbox-sweep")

    async def flush(self) -> None:
        """Graceful shutdown: return once everything submitted so far has been handled."""
        await self._queue.join()

    async def _publish_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._publish(batch, path="direct")
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self.sweep_once()
            except Exception:
                # The store or Kafka is unavailable: the entries stay; the next sweep retries.
                log.warning(
                    "outbox sweep failed; retrying in %.1fs", self._sweep_interval, exc_info=True
                )

    async def sweep_once(self) -> int:
        """Publish entries older than ``repair_after``; returns how many were repaired."""
        cutoff = int((self._clock() - self._repair_after) * 1000)
        entries = await self._outbox.pending(cutoff, BATCH)
        if not entries:
            return 0
        messages: list[Message] = []
        stale: list[OutboxEntry] = []
        for entry in entries:
            found = await self._store.read_messages(
                entry.chat_id, entry.sequence, entry.sequence, limit=1
            )
            if found:
                messages.append(found[0])
            else:
                stale.append(entry)  # cannot happen (same transaction); do not loop on it
        if stale:
            log.error("outbox entries without a message: %s", stale)
            await self._outbox.clear(stale)
        log.info("outbox sweep repairing %d message(s)", len(messages))
        await self._publish(messages, path="sweep")
        return len(messages)

    async def _publish(self, messages: list[Message], *, path: str) -> None:
        if not messages:
            return
        self._publishing_since[path] = time.monotonic()
        try:
            await self._publisher.publish(messages)
        except Exception:
            self._metrics.publish_failures.inc()
            self._failed = True
            log.warning("publishing %d message(s) failed; the sweeper retries", len(messages))
            if path == "direct":
                self._on_unpublished(messages)
            return
        finally:
            del self._publishing_since[path]
        self._failed = False
        self._metrics.published.labels(path).inc(len(messages))
        self._metrics.since_created(
            self._metrics.created_to_published.labels(path),
            (m.created_at_ms for m in messages),
            self._clock(),
        )
        try:
            await self._outbox.clear(
                [OutboxEntry(m.chat_id, m.sequence, m.created_at_ms) for m in messages]
            )
        except Exception:
            # Published but not cleared: the sweeper publishes them again (a duplicate, which
            # at-least-once delivery allows).
            log.warning("clearing %d outbox entries failed", len(messages), exc_info=True)
