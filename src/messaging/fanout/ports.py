"""The fanout plane's own ports (ADR 0022): the event log it consumes, the route table, the
hand-off to and from other processes, and where records that can never be delivered go.

Each port is a narrow ``typing.Protocol``; tests/fakes/fanout.py has an in-memory version of
each and tests/contract/test_fanout_ports.py runs one suite against the fakes and the real
adapters. Adapters raise only the domain's errors (``messaging.domain.errors``): a retriable
``Unavailable`` when trying again may work, a permanent error otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs

from messaging.domain.errors import MessagingError
from messaging.domain.model import Message
from messaging.protocol.delivery import Delivery, LocalDelivery, RouteLookup, RouteRegistry


class EventLogError(MessagingError):
    """The event log refused an operation for good (a permanent error: not retriable)."""

    code = "event_log_error"


@attrs.frozen
class EventRecord:
    """One decoded record of the log, with where it sits (for dead letters and readiness)."""

    partition: int
    offset: int
    message: Message


@attrs.frozen
class Undecodable:
    """A record this version cannot read: it is parked as a dead letter, never retried."""

    partition: int
    offset: int
    raw: bytes
    reason: str


@attrs.frozen
class EventBatch:
    records: tuple[EventRecord, ...]
    position: object
    """Opaque: what ``commit`` needs to mark the batch consumed (undecodable records too)."""
    undecodable: tuple[Undecodable, ...] = ()

    @property
    def messages(self) -> tuple[Message, ...]:
        return tuple(record.message for record in self.records)

    @property
    def partitions(self) -> frozenset[int]:
        return frozenset(r.partition for r in self.records) | {
            u.partition for u in self.undecodable
        }


class EventSource(Protocol):
    """A consumer of the persisted-message log. ``poll`` returns at most one batch (possibly
    empty after ``timeout_seconds``); records of a partition come in offset order, and after
    ``commit`` a new consumer of the same group starts after the batch."""

    async def poll(self, timeout_seconds: float) -> EventBatch: ...

    async def commit(self, batch: EventBatch) -> None: ...

    async def backlog(self) -> Mapping[int, int]:
        """Per partition assigned to this consumer whose log end it knows: the records between
        its position (what ``poll`` has returned) and the end, 0 when caught up. A partition
        whose end is not known yet (nothing fetched since it was assigned) is left out. Reads
        what the consumer already knows: it does not wait on the log (ADR 0026)."""
        ...


class RouteTable(RouteRegistry, RouteLookup, Protocol):
    """Where users' sockets are, shared by every process (ADR 0007). ``announce``/``withdraw``
    count per user (a user with two local sockets stays routed until both are gone) and never
    raise; ``lookup`` raises ``Unavailable`` when the table cannot be read."""

    @property
    def name(self) -> str: ...

    @property
    def degraded(self) -> bool:
        """The table cannot be read or written now (a call failed last, or stalls): this
        process's own sockets are served by the direct path meanwhile (ADR 0033)."""
        ...

    async def check(self) -> None:
        """Readiness: raises while another process uses this instance id."""
        ...

    async def refresh_once(self) -> None:
        """Re-announce this process's users; tells ``on_lost`` when hand-offs here may have
        been missed (the table lost them, or routing failed, stalled or lapsed since the last
        time), once the entries are written fresh."""
        ...

    async def run(self) -> None:
        """``refresh_once`` every ttl/3 until cancelled."""
        ...

    async def clear(self) -> None:
        """Graceful shutdown: remove this process from every route it announced."""
        ...


class Handoff(Protocol):
    """Passes deliveries to another app process (the one holding the sockets). At most once:
    a process not listening misses them (its clients catch up by sync)."""

    async def send(self, instance_id: str, deliveries: Sequence[Delivery]) -> None: ...


class HandoffReceiver(Protocol):
    """This process's end of the hand-off."""

    async def run_subscriber(self, local: LocalDelivery) -> None:
        """Deliver what other processes hand to this one, until cancelled."""
        ...

    async def subscribed(self) -> None:
        """Returns once hand-offs sent from now on reach ``local``."""
        ...


class DeadLetters(Protocol):
    """Where a record that can never be fanned out goes, so that its partition moves on and an
    operator can see it (and, later, replay it: the message itself is in the database)."""

    async def park(
        self, record: Message | bytes, partition: int, offset: int, reason: str
    ) -> None: ...


@attrs.frozen
class DeadLetter:
    """One parked record as an operator reads it back (``messaging dlq list``)."""

    offset: int
    """Its offset in the dead-letter topic (what ``messaging dlq replay --offset`` takes)."""
    partition: int
    """The messages topic partition it was parked from, and its offset there."""
    source_offset: int
    reason: str
    parked_at_ms: int
    raw: bytes
    message: Message | None
    """The decoded message, or None when the record cannot be decoded (never replayed)."""


@attrs.frozen
class Replayed:
    """What a replay did: the dead letters re-published and those left (undecodable)."""

    published: tuple[DeadLetter, ...]
    left: tuple[DeadLetter, ...]
