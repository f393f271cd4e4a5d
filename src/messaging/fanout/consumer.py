"""The fanout loop: poll the log, fan the batch out, commit only after the hand-off.

If the hand-off fails (Redis down, say) the same batch is retried with backoff and nothing is
committed, so a crash or a failure re-delivers rather than drops (at-least-once). Poll errors
are retried too: the loop stops only when cancelled.
"""

from __future__ import annotations

import asyncio
import logging

from messaging.fanout.ports import EventSource
from messaging.fanout.service import FanoutService
from messaging.metrics import Metrics

log = logging.getLogger(__name__)


class FanoutConsumer:
    def __init__(
        self,
        source: EventSource,
        service: FanoutService,
        metrics: Metrics,
        *,
        max_backoff_seconds: float = 2.0,
    ) -> None:
        self._source = source
        self._service = service
        self._metrics = metrics
        self._max_backoff = max_backoff_seconds
        self._stopping = False
        self._stopped = asyncio.Event()

    async def stop(self) -> None:
        """Graceful shutdown: finish the batch in hand, commit it, return."""
        self._stopping = True
        await self._stopped.wait()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._stopped.set()

    async def _run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            try:
                batch = await self._source.poll(0.5)
            except Exception:
                log.warning("polling the event log failed", exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(self._max_backoff, backoff * 2)
                continue
            self._metrics.fanout_lag.set(self._source.lag())
            if not batch.messages:
                backoff = 0.05
                continue
            while True:
                try:
                    await self._service.fan_out(batch.messages)
                    break
                except Exception:
                    log.warning(
                        "fanout of %d message(s) failed; retrying in %.2fs",
                        len(batch.messages),
                        backoff,
                        exc_info=True,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(self._max_backoff, backoff * 2)
            backoff = 0.05
            try:
                await self._source.commit(batch)
            except Exception:
                # E.g. a rebalance moved the partition: its new owner re-delivers (duplicates
                # are allowed; clients drop them by sequence).
                log.warning("committing offsets failed", exc_info=True)
