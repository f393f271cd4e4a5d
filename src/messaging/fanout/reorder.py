"""The per-chat reorder window of the fanout (ADR 0035; pure: no I/O, the clock is passed in).

The log holds a chat's messages in the order they were *published*, which is not always their
``sequence`` order: two processes (or two group-commit batches of one process) append
neighbouring sequences and publish them in the other order. Fanned out as they come, the
later sequence reaches the sockets first and the client sees a gap.

The window knows what comes next from the sequences themselves: per chat it remembers the
highest sequence released (``high``). A record with ``sequence == high + 1`` (or at or below
``high``: late or re-delivered, the client drops duplicates) is released at once, with every
held one it makes contiguous; one further ahead is held, at most ``window_seconds``. When the
oldest hold of a chat expires, everything held up to it is released in order and the chat moves
past the hole (the missing message arrives later and is pushed late, or the client syncs it).
A chat seen for the first time releases its first record at once (nothing is known before it).

Bounded: at most ``max_held`` records held in all (past it, the oldest hold is released early)
and ``max_chats`` chats remembered (least recently seen forgotten first, its holds released).
Nothing is ever held longer than the window.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable

from messaging.fanout.ports import EventRecord

DEFAULT_MAX_HELD = 10_000
DEFAULT_MAX_CHATS = 100_000


class _Chat:
    __slots__ = ("held", "high")

    def __init__(self, high: int) -> None:
        self.high = high
        self.held: dict[int, tuple[float, EventRecord]] = {}
        """Held records by sequence, each with when it must go at the latest."""


class ReorderWindow:
    def __init__(
        self,
        window_seconds: float,
        *,
        max_held: int = DEFAULT_MAX_HELD,
        max_chats: int = DEFAULT_MAX_CHATS,
    ) -> None:
        if window_seconds < 0:
            raise ValueError("window_seconds must be >= 0")
        if max_held < 1 or max_chats < 1:
            raise ValueError("max_held and max_chats must be >= 1")
        self._window = window_seconds
        self._max_held = max_held
        self._max_chats = max_chats
        self._chats: OrderedDict[str, _Chat] = OrderedDict()
        self._deadlines: list[tuple[float, str, int]] = []  # heap; stale entries skipped
        self._held = 0
        self.holds = 0
        """Records held since the start (each would have been pushed out of order)."""
        self.expired = 0
        """Holes the window gave up on: released past a missing sequence."""

    @property
    def held(self) -> int:
        return self._held

    @property
    def chats(self) -> int:
        return len(self._chats)

    def next_due(self) -> float | None:
        """When the earliest hold expires (None when nothing is held)."""
        self._drop_stale()
        return self._deadlines[0][0] if self._deadlines else None

    def offer(self, records: Iterable[EventRecord], now: float) -> list[EventRecord]:
        """Take records in log order; return those to fan out now, in sequence order per chat
        (holds that expired by ``now`` first)."""
        released = self.due(now)
        for record in records:
            self._offer(record, now, released)
        while self._held > self._max_held:
            self._expire_first(released)
        return released

    def due(self, now: float) -> list[EventRecord]:
        """The holds expired by ``now``, released past their holes, in order per chat."""
        released: list[EventRecord] = []
        while True:
            self._drop_stale()
            if not self._deadlines or self._deadlines[0][0] > now:
                return released
            self._expire_first(released)

    def drain(self) -> list[EventRecord]:
        """Everything held, in order per chat (shutting down: nothing may stay behind)."""
        released: list[EventRecord] = []
        for chat in self._chats.values():
            self._release_upto(chat, max(chat.held, default=chat.high), released)
        self._deadlines.clear()
        return released

    # ---------------------------------------------------------------- internals

    def _offer(self, record: EventRecord, now: float, released: list[EventRecord]) -> None:
        chat_id = record.message.chat_id
        sequence = record.message.sequence
        chat = self._chats.get(chat_id)
        if chat is None:
            self._chats[chat_id] = _Chat(sequence)
            released.append(record)
            if len(self._chats) > self._max_chats:
                _, forgotten = self._chats.popitem(last=False)
                self._release_upto(forgotten, max(forgotten.held, default=0), released)
            return
        self._chats.move_to_end(chat_id)
        if sequence <= chat.high:
            released.append(record)  # late (after its hole expired) or re-delivered
        elif sequence == chat.high + 1:
            chat.high = sequence
            released.append(record)
            self._release_contiguous(chat, released)
        elif sequence not in chat.held:  # a re-delivery of a held record is dropped
            due = now + self._window
            chat.held[sequence] = (due, record)
            heapq.heappush(self._deadlines, (due, chat_id, sequence))
            self._held += 1
            self.holds += 1

    def _release_contiguous(self, chat: _Chat, released: list[EventRecord]) -> None:
        while (entry := chat.held.pop(chat.high + 1, None)) is not None:
            chat.high += 1
            self._held -= 1
            released.append(entry[1])

    def _release_upto(self, chat: _Chat, sequence: int, released: list[EventRecord]) -> None:
        for key in sorted(k for k in chat.held if k <= sequence):
            released.append(chat.held.pop(key)[1])
            self._held -= 1
        chat.high = max(chat.high, sequence)
        self._release_contiguous(chat, released)

    def _expire_first(self, released: list[EventRecord]) -> None:
        self._drop_stale()
        _, chat_id, sequence = heapq.heappop(self._deadlines)
        self.expired += 1
        self._release_upto(self._chats[chat_id], sequence, released)

    def _drop_stale(self) -> None:
        """Heap entries whose record was released already (by its predecessor arriving)."""
        deadlines = self._deadlines
        while deadlines:
            _, chat_id, sequence = deadlines[0]
            chat = self._chats.get(chat_id)
            if chat is not None and sequence in chat.held:
                return
            heapq.heappop(deadlines)
