"""Per-chat reorder and dedupe buffer (pure: no I/O, no clock).

The transport is at-least-once and unordered across live pushes and replays (docs/protocol.md,
"Order of events on connect"), while the application must see each chat's messages exactly once
and in ``sequence`` order. One :class:`ReorderBuffer` per chat does that:

- ``delivered`` is the highest sequence released to the application; everything at or below it
  is done. :meth:`ReorderBuffer.receive` releases the contiguous run that starts at
  ``delivered + 1``, drops anything at or below ``delivered`` or already buffered (duplicates),
  and holds the rest.
- While anything is held there is a **gap**: ``delivered + 1`` is missing. The caller asks the
  server for ``sync_request`` from ``delivered`` (after a short debounce: the missing message is
  usually just late).
- :meth:`ReorderBuffer.skip_to` is how a finished sync closes a gap for good: the server has sent
  every message the user may see in ``(delivered, head]``, so a sequence in that range that did
  not arrive is one the user may not see (before joining, after removal, or already acknowledged
  by another device of the user in a sync without positions) and is skipped.
- The buffer is bounded. When full, the highest sequence is dropped (the lowest ones are the
  ones the application needs next); a dropped sequence is never skipped over, so the gap stays
  open and the next sync brings it back.
"""

from __future__ import annotations

import bisect
from typing import Generic, Protocol, TypeVar

DEFAULT_CAPACITY = 10_000


class Sequenced(Protocol):
    @property
    def sequence(self) -> int: ...


M = TypeVar("M", bound=Sequenced)


class ReorderBuffer(Generic[M]):
    """Releases one chat's messages in sequence order, each exactly once."""

    def __init__(self, delivered: int = 0, *, capacity: int = DEFAULT_CAPACITY) -> None:
        if delivered < 0:
            raise ValueError("delivered must be >= 0")
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._delivered = delivered
        self._capacity = capacity
        self._held: dict[int, M] = {}
        self._keys: list[int] = []  # the held sequences, ascending
        # Dropped because full and not delivered yet: the lowest and the highest such sequence.
        self._overflow: tuple[int, int] | None = None
        self.duplicates = 0
        """Messages dropped because they were delivered or held already."""
        self.overflowed = 0
        """Messages dropped because the buffer was full (they come back with a sync)."""

    @property
    def delivered(self) -> int:
        """The highest sequence released; every sequence up to it is done."""
        return self._delivered

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def has_gap(self) -> bool:
        """True when messages are held because ``delivered + 1`` has not arrived."""
        return bool(self._keys) or self._overflow is not None

    @property
    def lowest_held(self) -> int | None:
        return self._keys[0] if self._keys else None

    @property
    def highest_held(self) -> int | None:
        return self._keys[-1] if self._keys else None

    def __len__(self) -> int:
        return len(self._keys)

    def receive(self, message: M) -> list[M]:
        """Take one message; return the messages now deliverable, in order (maybe none)."""
        sequence = message.sequence
        if sequence <= self._delivered or sequence in self._held:
            self.duplicates += 1
            return []
        if sequence == self._delivered + 1:
            self._delivered = sequence
            released = [message]
            self._release_contiguous(released)
            return released
        if len(self._keys) >= self._capacity:
            if sequence > self._keys[-1]:
                self._drop(sequence)
                return []
            highest = self._keys.pop()
            del self._held[highest]
            self._drop(highest)
        bisect.insort(self._keys, sequence)
        self._held[sequence] = message
        return []

    def skip_to(self, head: int) -> list[M]:
        """Everything visible up to ``head`` has been sent: stop waiting for the missing ones.

        Releases the held messages up to ``head`` in order, moves ``delivered`` to ``head`` and
        then releases what became contiguous. Never skips past a sequence dropped on overflow.
        """
        if self._overflow is not None:
            lowest_dropped = self._overflow[0]
            # Below the lowest dropped sequence nothing is missing for lack of room. Above it,
            # which sequences were dropped is not tracked: skip nothing until a sync refilled
            # everything up to the highest dropped one.
            head = min(head, lowest_dropped - 1 if self._delivered < lowest_dropped else 0)
        if head <= self._delivered:
            return []
        cut = bisect.bisect_right(self._keys, head)
        released = [self._held.pop(key) for key in self._keys[:cut]]
        del self._keys[:cut]
        self._delivered = head
        self._release_contiguous(released)
        return released

    def _release_contiguous(self, released: list[M]) -> None:
        run = 0
        keys = self._keys
        while run < len(keys) and keys[run] == self._delivered + 1:
            self._delivered = keys[run]
            released.append(self._held.pop(keys[run]))
            run += 1
        if run:
            del keys[:run]
        if self._overflow is not None and self._overflow[1] <= self._delivered:
            self._overflow = None

    def _drop(self, sequence: int) -> None:
        self.overflowed += 1
        if self._overflow is None:
            self._overflow = (sequence, sequence)
        else:
            low, high = self._overflow
            self._overflow = (min(low, sequence), max(high, sequence))
