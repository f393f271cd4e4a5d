"""The fanout loop: poll the log, fan the batch out, commit only after the hand-off (ADR 0007,
ADR 0022).

A batch whose fanout fails with a retriable error (Redis or the store briefly away) is retried
with backoff, at most ``max_attempts`` times, and nothing is committed meanwhile, so a crash
re-delivers rather than drops (at-least-once). What can never succeed does not stall the
partition: after a permanent error each record is tried alone and those that still fail are
parked in ``DeadLetters``; a batch still failing after ``max_attempts`` is parked whole; an
undecodable record is parked at once. Parked messages are in the database: clients sync them.

While a batch is failing, ``check`` (the ``fanout`` readiness check) names its partitions, and
``/metrics`` counts failures and dead letters and shows the seconds since the last progress.
A partition with records pending (the log's end beyond the position, or a batch of it in hand)
and none finished for longer than ``stall_seconds`` is *stalled* (ADR 0026): the
``fanout_progress`` check (:class:`PartitionProgress`) names it, and ``/metrics`` counts it.

Between the log and the fanout sits the per-chat reorder window (ADR 0035): records a chat's
predecessor has not come for are held at most ``reorder_window_seconds`` (the poll waits no
longer than the earliest hold), then fanned out in sequence order. A batch is committed once
what it released is handed off; what it left held is fanned out by a later turn of the loop, or
on stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

from messaging.domain.errors import MessagingError
from messaging.domain.model import Message
from messaging.fanout.ports import DeadLetters, EventBatch, EventRecord, EventSource
from messaging.fanout.reorder import ReorderWindow
from messaging.fanout.service import FanoutService
from messaging.fanout.stalls import StallWatch
from messaging.metrics import Metrics

log = logging.getLogger(__name__)


def is_retriable(exc: BaseException) -> bool:
    """The domain's errors say so; a bare network error or timeout is worth another try;
    anything else (a bug, a permanent refusal) is not."""
    if isinstance(exc, MessagingError):
        return exc.retriable
    return isinstance(exc, OSError | TimeoutError)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


STALLED_SECONDS = 1.0
"""A batch's fanout in flight for longer counts as failing for the direct path's trigger."""


class _Stopped(Exception):
    """Stop was asked while a batch was in hand: leave it uncommitted (it is re-delivered)."""


class FanoutConsumer:
    name = "fanout"
    critical = False
    """A failing fanout degrades freshness, not readiness (ADR 0033): sends still work, and
    the direct path beside the log delivers meanwhile."""

    def __init__(
        self,
        source: EventSource,
        service: FanoutService,
        dead_letters: DeadLetters,
        metrics: Metrics,
        *,
        max_attempts: int,
        max_backoff_seconds: float,
        first_backoff_seconds: float = 0.05,
        poll_seconds: float = 0.5,
        reorder_window_seconds: float = 0.0,
        stall_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._source = source
        self._service = service
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._first_backoff = first_backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._poll_seconds = poll_seconds
        self._window = ReorderWindow(reorder_window_seconds) if reorder_window_seconds > 0 else None
        self._clock = clock
        self._sleep = sleep
        self._stopping = False
        self._stopped = asyncio.Event()
        self._last_progress = clock()
        self._poll_error: str | None = None
        self._failing: dict[int, str] = {}
        self._failing_since: float | None = None
        self._attempt_since: float | None = None
        self._stalls = StallWatch(stall_seconds)
        self._backlog: Mapping[int, int] = {}
        self._in_hand: frozenset[int] = frozenset()
        """Partitions of the batch fetched and not yet finished (handed off and committed)."""
        self._delivering: frozenset[int] = frozenset()
        """Partitions of the records being fanned out now (the reorder window's too)."""
        self.progress = PartitionProgress(self)
        metrics.fanout_seconds_since_progress.set_function(
            lambda: self._clock() - self._last_progress
        )
        metrics.fanout_stalled_partitions.set_function(
            lambda: len(self._stalls.stalled(self._clock()))
        )
        metrics.fanout_longest_pending_seconds.set_function(
            lambda: self._stalls.longest_wait(self._clock())
        )
        window = self._window
        if window is not None:
            metrics.fanout_reorder_held.set_function(lambda: window.held)

    # ---------------------------------------------------------------- lifecycle and health

    async def stop(self) -> None:
        """Graceful shutdown: finish the batch in hand, commit it, return."""
        self._stopping = True
        await self._stopped.wait()

    async def run(self) -> None:
        try:
            await self._run()
        except _Stopped:
            pass
        finally:
            self._stopped.set()

    async def check(self) -> None:
        """Readiness: fails while polling fails or a batch keeps failing, naming its
        partitions."""
        if self._poll_error is not None:
            raise RuntimeError(f"polling the event log fails: {self._poll_error}")
        if self._failing:
            since = self._clock() - (self._failing_since or self._clock())
            partitions = ", ".join(str(p) for p in sorted(self._failing))
            reason = next(iter(self._failing.values()))
            raise RuntimeError(f"partition(s) {partitions} failing for {since:.0f}s: {reason}")

    @property
    def failing(self) -> bool:
        """Polling fails, a batch keeps failing (what ``check`` reports), the fanout of a
        batch has been in flight for more than :data:`STALLED_SECONDS` (Redis or the store
        silent), or a partition is stalled (ADR 0026): the direct path (ADR 0033) runs
        meanwhile."""
        now = self._clock()
        since = self._attempt_since
        stalled = since is not None and now - since > STALLED_SECONDS
        return (
            self._poll_error is not None
            or bool(self._failing)
            or stalled
            or bool(self._stalls.stalled(now))
        )

    async def stalled(self) -> dict[int, float]:
        """The stalled partitions now, each with the seconds it has waited for progress."""
        await self._observe()
        return self._stalls.stalled(self._clock())

    @property
    def stall_seconds(self) -> float:
        return self._stalls.bound_seconds

    async def _observe(self) -> None:
        """Tell the stall watch which partitions have records pending now."""
        try:
            self._backlog = await self._source.backlog()
        except Exception:  # not known now: the last answer stands
            log.debug("reading the fanout's backlog failed", exc_info=True)
        pending = {p for p, behind in self._backlog.items() if behind > 0}
        self._stalls.observe(pending | self._in_hand | self._delivering, self._clock())

    def _progressed(self) -> None:
        self._last_progress = self._clock()

    def _fail(self, partitions: Collection[int], exc: BaseException) -> None:
        if not self._failing:
            self._failing_since = self._clock()
        for partition in partitions:
            self._failing[partition] = describe(exc)

    def _recovered(self) -> None:
        self._failing.clear()
        self._failing_since = None

    # ---------------------------------------------------------------- the loop

    async def _run(self) -> None:
        while not self._stopping:
            batch = await self._poll()
            if batch is None:
                continue
            self._in_hand = batch.partitions
            await self._observe()
            self._metrics.fanout_lag.set(sum(self._backlog.values()))
            for bad in batch.undecodable:
                reason = f"undecodable: {bad.reason}"
                await self._park(bad.raw, bad.partition, bad.offset, reason, "undecodable")
            records = self._in_order(batch.records)
            if records:
                await self._deliver(records)
            self._recovered()
            if batch.records or batch.undecodable:
                await self._commit(batch)
            self._stalls.progressed(self._in_hand, self._clock())
            self._in_hand = frozenset()
            self._progressed()
        if self._window is not None and (held := self._window.drain()):
            await self._deliver(held)

    def _in_order(self, records: Sequence[EventRecord]) -> Sequence[EventRecord]:
        """What to fan out now: the records through the reorder window (with the holds that
        expired meanwhile), or as they came without one."""
        window = self._window
        if window is None:
            return records
        holds, expired = window.holds, window.expired
        released = window.offer(records, self._clock())
        self._metrics.fanout_reorder_holds.inc(window.holds - holds)
        self._metrics.fanout_reorder_expired.inc(window.expired - expired)
        return released

    def _poll_timeout(self) -> float:
        """No longer than the earliest hold of the reorder window may still wait."""
        due = self._window.next_due() if self._window is not None else None
        if due is None:
            return self._poll_seconds
        return max(0.0, min(self._poll_seconds, due - self._clock()))

    async def _poll(self) -> EventBatch | None:
        delay = self._first_backoff
        while True:
            try:
                batch = await self._source.poll(self._poll_timeout())
            except Exception as exc:
                self._metrics.fanout_failures.labels("poll").inc()
                self._poll_error = describe(exc)
                log.warning("polling the event log failed; retrying in %.2fs", delay, exc_info=True)
                await self._sleep(min(delay, self._poll_timeout()) if self._window else delay)
                delay = min(self._max_backoff, delay * 2)
                if self._stopping:
                    return None
                # The log being away holds no message past its window.
                if released := self._in_order(()):
                    await self._deliver(released)
                continue
            self._poll_error = None
            return batch

    async def _commit(self, batch: EventBatch) -> None:
        try:
            await self._source.commit(batch)
        except Exception:
            # E.g. a rebalance moved the partition: its new owner re-delivers (duplicates
            # are allowed; clients drop them by sequence).
            self._metrics.fanout_failures.labels("commit").inc()
            log.warning("committing offsets failed", exc_info=True)

    async def _deliver(self, records: Sequence[EventRecord]) -> None:
        """Fan the records out or park them (raises ``_Stopped`` if stopped meanwhile)."""
        partitions = frozenset(r.partition for r in records)
        self._delivering = partitions
        try:
            await self._deliver_or_park(records)
        finally:
            self._delivering = frozenset()
        self._stalls.progressed(partitions, self._clock())

    async def _deliver_or_park(self, records: Sequence[EventRecord]) -> None:
        error = await self._attempt([r.message for r in records], {r.partition for r in records})
        if error is None:
            return
        if is_retriable(error):
            log.error(
                "fanout of %d record(s) failed %d times; parking them",
                len(records),
                self._max_attempts,
            )
            reason = f"failed {self._max_attempts} times, last: {describe(error)}"
            for record in records:
                await self._park(
                    record.message, record.partition, record.offset, reason, "exhausted"
                )
            return
        log.error("fanout failed permanently (%s); trying each record alone", describe(error))
        for record in records:
            error = await self._attempt([record.message], (record.partition,))
            if error is not None:
                cause = "exhausted" if is_retriable(error) else "permanent"
                await self._park(
                    record.message, record.partition, record.offset, describe(error), cause
                )

    async def _attempt(
        self, messages: Sequence[Message], partitions: Collection[int]
    ) -> Exception | None:
        """Fan out, retrying a retriable error up to ``max_attempts`` times; the error that
        ended the attempts, or None on success. Raises ``_Stopped`` if stopped meanwhile."""
        delay = self._first_backoff
        for attempt in range(1, self._max_attempts + 1):
            self._attempt_since = self._clock()
            try:
                await self._service.fan_out(messages)
                return None
            except Exception as exc:
                retriable = is_retriable(exc)
                self._metrics.fanout_failures.labels(
                    "retriable" if retriable else "permanent"
                ).inc()
                self._fail(partitions, exc)
                if not retriable or attempt == self._max_attempts:
                    return exc
                log.warning(
                    "fanout of %d message(s) failed (attempt %d of %d); retrying in %.2fs",
                    len(messages),
                    attempt,
                    self._max_attempts,
                    delay,
                    exc_info=True,
                )
                await self._sleep(delay)
                delay = min(self._max_backoff, delay * 2)
                if self._stopping:
                    raise _Stopped from exc
            finally:
                self._attempt_since = None
        raise AssertionError("unreachable")

    async def _park(
        self, record: Message | bytes, partition: int, offset: int, reason: str, cause: str
    ) -> None:
        """Park one record; a failing dead-letter store is retried until stopped (the record
        must not be skipped unrecorded)."""
        delay = self._first_backoff
        while True:
            try:
                await self._dead_letters.park(record, partition, offset, reason)
                break
            except Exception as exc:
                self._metrics.fanout_failures.labels("dead_letter").inc()
                self._fail((partition,), exc)
                log.warning("parking a dead letter failed; retrying", exc_info=True)
                await self._sleep(delay)
                delay = min(self._max_backoff, delay * 2)
                if self._stopping:
                    raise _Stopped from exc
        self._metrics.fanout_dead_letters.labels(cause).inc()


class PartitionProgress:
    """The ``fanout_progress`` readiness check (ADR 0026): fails while partitions of this
    consumer have had records pending and none finished for longer than its bound, naming
    each with how long. Not critical (ADR 0033): the process serves, less fresh."""

    name = "fanout_progress"
    critical = False

    def __init__(self, consumer: FanoutConsumer) -> None:
        self._consumer = consumer

    async def check(self) -> None:
        stalled = await self._consumer.stalled()
        if stalled:
            each = ", ".join(f"{p} ({seconds:.0f}s)" for p, seconds in stalled.items())
            raise RuntimeError(
                f"partition(s) {each} with records pending and no progress for longer than "
                f"{self._consumer.stall_seconds:g}s"
            )
