"""Delivery acks, coalesced (ADR 0025, amending 0015).

An ack is monotonic: only the highest ``last_acked_sequence`` of a (user, chat) matters. So the
durable write is write-behind and coalesced: :meth:`DeliveryAcks.submit` returns at once (the
connection's command lane never waits for the store), every ack of a (user, chat) that arrives
within the window joins one pending entry, and one conditional write of the highest sequence
lands per entry and window. When it lands, every ack that waited is answered with the stored
value; if it fails, every one is answered with the retriable error (the client acks again).
Writes of one (user, chat) never overlap, and the store's write is forward-only, so nothing
goes backwards. A member reading a busy chat therefore costs at most one write per window
(1 / 0.2 s = 5 writes/s) whatever the message rate.

Acks the connection cannot vouch for (it did not send that sequence) are checked against the
member's visibility first, also in the flush, each on its own: a refused one is answered with its
error and does not join the write.

One task, owned here, exists only while something is pending; :meth:`close` writes what is
pending at once and awaits it (the composition root calls it before the store client closes).
A crash inside the window loses the writes of at most one window: the member's stored position
is up to one window behind, so a reconnect re-delivers those few messages (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import attrs

from messaging.domain.errors import InvalidInput, MessagingError, Unavailable
from messaging.domain.ids import check_chat_id
from messaging.durability.ports import MessageStore

log = logging.getLogger(__name__)

Reply = Callable[[int | MessagingError], None]
"""Answers one ack: the stored last_acked_sequence, or the error."""
Check = Callable[[str, str, int], Awaitable[None]]
"""Raises the ack's error when the user may not ack up to that sequence."""

WRITES_IN_PARALLEL = 32


@attrs.define
class _Pending:
    sequence: int = -1
    """The highest vouched-for sequence (-1: none yet)."""
    waiters: list[Reply] = attrs.field(factory=list)
    unchecked: list[tuple[int, Reply]] = attrs.field(factory=list)


class DeliveryAcks:
    def __init__(
        self,
        store: MessageStore,
        check: Check,
        *,
        window_seconds: float,
        pending_limit: int,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._check = check
        self._window = window_seconds
        self._limit = pending_limit
        self._sleep = sleep
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._waiting = 0
        self._task: asyncio.Task[None] | None = None
        self._sleeping = False
        self._closing = False
        self.writes = 0
        """Store writes made (tests and the ADR's arithmetic)."""

    def submit(
        self, user_id: str, chat_id: str, sequence: int, *, delivered: bool, reply: Reply
    ) -> None:
        """Take one ack; ``reply`` is called once, later, from the flush. ``delivered``: the
        caller sent this user ``sequence`` of this chat (so it was visible to them; ADR 0015).
        Raises at once for malformed input or when too many acks wait (retriable)."""
        check_chat_id(chat_id)
        if sequence < (1 if delivered else 0):
            raise InvalidInput(
                "sequence must be positive" if delivered else "sequence must not be negative"
            )
        if self._closing:
            raise Unavailable("the server is shutting down; ack again")
        if self._waiting >= self._limit:
            raise Unavailable("too many acks waiting to be stored; ack again")
        entry = self._pending.get((user_id, chat_id))
        if entry is None:
            entry = self._pending[(user_id, chat_id)] = _Pending()
        if delivered:
            entry.sequence = max(entry.sequence, sequence)
            entry.waiters.append(reply)
        else:
            entry.unchecked.append((sequence, reply))
        self._waiting += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="delivery-acks")

    async def ack(self, user_id: str, chat_id: str, sequence: int, *, delivered: bool) -> int:
        """:meth:`submit`, awaiting the answer."""
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def reply(result: int | MessagingError) -> None:
            if answer.done():
                return
            if isinstance(result, MessagingError):
                answer.set_exception(result)
            else:
                answer.set_result(result)

        self.submit(user_id, chat_id, sequence, delivered=delivered, reply=reply)
        return await answer

    @property
    def pending(self) -> int:
        """Acks waiting for their write."""
        return self._waiting

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def running(self) -> bool:
        return self._task is not None

    async def close(self) -> None:
        """Write what is pending now (no more waiting for the window) and await it; acks that
        arrive from now on are refused as retriable."""
        self._closing = True
        task = self._task
        if task is None:
            return
        if self._sleeping:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            while self._pending:
                if not self._closing:
                    self._sleeping = True
                    try:
                        await self._sleep(self._window)
                    except asyncio.CancelledError:
                        if not self.closing:
                            raise
                        task = asyncio.current_task()
                        if task is not None:
                            task.uncancel()  # woken by close: write now
                    finally:
                        self._sleeping = False
                batch, self._pending = self._pending, {}
                await self._flush(batch)
        finally:
            self._task = None
            left, self._pending = self._pending, {}  # only if cancelled other than by close
            for entry in left.values():
                self._answer(entry, Unavailable("the ack was not stored; ack again"))

    async def _flush(self, batch: dict[tuple[str, str], _Pending]) -> None:
        limit = asyncio.Semaphore(WRITES_IN_PARALLEL)

        async def one(key: tuple[str, str], entry: _Pending) -> None:
            async with limit:
                await self._write(key, entry)

        await asyncio.gather(*(one(key, entry) for key, entry in batch.items()))

    async def _write(self, key: tuple[str, str], entry: _Pending) -> None:
        user_id, chat_id = key
        for sequence, reply in entry.unchecked:
            try:
                await self._check(user_id, chat_id, sequence)
            except MessagingError as exc:
                self._settle(reply, exc)
                continue
            except Exception:
                log.exception("checking an ack of %s in %s failed", user_id, chat_id)
                self._settle(reply, Unavailable("the ack could not be checked; ack again"))
                continue
            entry.sequence = max(entry.sequence, sequence)
            entry.waiters.append(reply)
        entry.unchecked.clear()
        if not entry.waiters:
            return
        try:
            self.writes += 1
            stored = await self._store.advance_last_acked(user_id, chat_id, entry.sequence)
        except MessagingError as exc:
            self._answer(entry, exc if exc.retriable else Unavailable(str(exc)))
        except Exception:
            log.exception("storing an ack of %s in %s failed", user_id, chat_id)
            self._answer(entry, Unavailable("the ack was not stored; ack again"))
        else:
            self._answer(entry, stored)

    def _answer(self, entry: _Pending, result: int | MessagingError) -> None:
        replies = [*entry.waiters, *(reply for _, reply in entry.unchecked)]
        entry.waiters.clear()
        entry.unchecked.clear()
        for reply in replies:
            self._settle(reply, result)

    def _settle(self, reply: Reply, result: int | MessagingError) -> None:
        self._waiting -= 1
        try:
            reply(result)
        except Exception:
            log.exception("answering an ack failed")
