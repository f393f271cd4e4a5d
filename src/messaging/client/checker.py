"""Consistency checker over the recorded histories of many clients (pure: no I/O, no clock).

Input: one :class:`~messaging.client.history.History` per client (what it sent and the answers,
what it received and delivered, its delivery acks), keyed by a name of the caller's choice, and
optionally each member's **final view** per chat (:class:`ChatView`: what it holds after a last
explicit sync; :func:`view_of` builds it from a history). Output: a :class:`Report` of typed
:class:`Violation` records, each with a :class:`ViolationKind` and a human message.

What is checked (docs/protocol.md, MVP consistency model):

``acked_message_missing``
    A message acknowledged to its sender (``send_ack``) is missing from a member's final view,
    although its sequence is in the range that member may see.
``sequence_conflict``
    One ``(chat, sequence)`` was acknowledged for one message but holds another one: in another
    acknowledgement, or in what a member received.
``idempotency_violated``
    One ``(sender, client_message_id)`` is at two places (two sequences, or two chats), or was
    acknowledged twice as a new message (``duplicate: false``).
``views_diverge``
    Members disagree on a chat: different messages at one sequence, a member delivering out of
    sequence order, or a member's final view lacking a message that exists (seen by others).
``sequence_gap``
    A final view skips a sequence between its first visible one and its last.
``read_your_writes``
    The sender's own final view lacks a message acknowledged to it.
``ack_regressed``
    Acks moved backwards: a client's ``ack`` frames or the server's ``acked`` answers decreased
    for a chat, or a send acknowledged with a lower sequence than a send of the same chat that was
    acknowledged before it was even requested (sequences follow real time: linearizable).
``ack_ahead_of_delivery``
    A client acknowledged (as delivered) a sequence it never delivered to its application.
``duplicate_delivery``
    A client delivered one sequence of a chat twice to its application (exactly-once broken).

A history recorded with ``record_messages=False`` contributes its sends and acks only.
Times are compared only for the real-time rule, with whole-millisecond strictness, so the
histories must come from clocks that agree (one machine, or synchronised ones).
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import attrs

from messaging.client.history import History, ReceivedRecord
from messaging.domain.model import Message

__all__ = [
    "ChatView",
    "Report",
    "ViewEntry",
    "Violation",
    "ViolationKind",
    "check",
    "view_of",
]


class ViolationKind(enum.StrEnum):
    ACKED_MESSAGE_MISSING = "acked_message_missing"
    SEQUENCE_CONFLICT = "sequence_conflict"
    IDEMPOTENCY_VIOLATED = "idempotency_violated"
    VIEWS_DIVERGE = "views_diverge"
    SEQUENCE_GAP = "sequence_gap"
    READ_YOUR_WRITES = "read_your_writes"
    ACK_REGRESSED = "ack_regressed"
    ACK_AHEAD_OF_DELIVERY = "ack_ahead_of_delivery"
    DUPLICATE_DELIVERY = "duplicate_delivery"


@attrs.frozen(kw_only=True)
class Violation:
    kind: ViolationKind
    message: str
    chat_id: str | None = None
    sequence: int | None = None
    clients: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"[{self.kind.value}] {self.message}"


@attrs.frozen(kw_only=True)
class ViewEntry:
    """One message as a member holds it."""

    sequence: int
    sender_id: str
    client_message_id: str
    text: str

    @classmethod
    def of_record(cls, record: ReceivedRecord) -> ViewEntry:
        return cls(
            sequence=record.sequence,
            sender_id=record.sender_id,
            client_message_id=record.client_message_id,
            text=record.text,
        )

    @classmethod
    def of_message(cls, message: Message) -> ViewEntry:
        return cls(
            sequence=message.sequence,
            sender_id=message.sender_id,
            client_message_id=message.client_message_id,
            text=message.text,
        )


@attrs.frozen(kw_only=True)
class ChatView:
    """A member's final view of one chat, in the order the member holds it.

    ``after``: sequences up to it are not expected (the member joined later, or the client
    started from that position). ``until``: sequences after it are not visible to the member
    (removed from the group); None: no upper bound.
    """

    entries: tuple[ViewEntry, ...]
    after: int = 0
    until: int | None = None

    def visible(self, sequence: int) -> bool:
        return sequence > self.after and (self.until is None or sequence <= self.until)


@attrs.frozen(kw_only=True)
class Report:
    violations: tuple[Violation, ...]
    clients: int
    chats: int
    acked_sends: int
    observations: int
    """Message observations compared (acks, received records and view entries)."""

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def kinds(self) -> set[ViolationKind]:
        return {violation.kind for violation in self.violations}

    def of_kind(self, kind: ViolationKind) -> list[Violation]:
        return [violation for violation in self.violations if violation.kind is kind]

    def summary(self, limit: int = 20) -> str:
        head = (
            f"{len(self.violations)} violation(s) over {self.clients} client(s), {self.chats} "
            f"chat(s), {self.acked_sends} acknowledged send(s), {self.observations} observations"
        )
        lines = [head, *(f"  {violation}" for violation in self.violations[:limit])]
        if len(self.violations) > limit:
            lines.append(f"  ... and {len(self.violations) - limit} more")
        return "\n".join(lines)


def view_of(
    history: History,
    *,
    after: Mapping[str, int] | None = None,
    delivered_only: bool = True,
) -> dict[str, ChatView]:
    """A client's final view per chat from its history: what it delivered to its application
    (or, with ``delivered_only=False``, everything released to its queue), in that order.
    ``after``: per chat, the position the client started from (default 0)."""
    entries: dict[str, list[ViewEntry]] = defaultdict(list)
    for record in history.received:
        if delivered_only and record.delivered_at_ms is None:
            continue
        entries[record.chat_id].append(ViewEntry.of_record(record))
    starts = after or {}
    chat_ids = dict.fromkeys([*entries, *starts])
    return {
        chat_id: ChatView(entries=tuple(entries.get(chat_id, ())), after=starts.get(chat_id, 0))
        for chat_id in chat_ids
    }


# ---------------------------------------------------------------- internals

Content = tuple[str, str, str]
"""(sender_id, client_message_id, text): what makes two messages the same message."""
Location = tuple[str, int]
"""(chat_id, sequence)."""
UNKNOWN_SENDER = "?"


@attrs.frozen
class _Ack:
    client: str
    chat_id: str
    sequence: int
    content: Content
    duplicate: bool | None
    requested_at_ms: int
    finished_at_ms: int | None


@attrs.frozen
class _Seen:
    """A read-side observation: a member holding a message at a sequence."""

    client: str
    source: str  # "received" or "final view"
    content: Content


def _describe(content: Content) -> str:
    sender, cmid, text = content
    shown = text if len(text) <= 40 else text[:37] + "..."
    return f"{cmid!r} from {sender} ({shown!r})"


def _ranges(numbers: Sequence[int]) -> str:
    parts: list[str] = []
    start = prev = numbers[0]
    for number in numbers[1:]:
        if number == prev + 1:
            prev = number
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = number
    parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


class _Checker:
    def __init__(
        self,
        histories: Mapping[str, History],
        views: Mapping[str, Mapping[str, ChatView]],
        realtime_order: bool,
    ) -> None:
        self.histories = histories
        self.views = views
        self.realtime_order = realtime_order
        self.violations: list[Violation] = []
        self.observations = 0
        # Write side: every acknowledged send.
        self.acks: list[_Ack] = []
        # Read side: per (chat, sequence), who holds which message.
        self.seen: dict[Location, list[_Seen]] = defaultdict(list)
        # Everything, per message identity and per location.
        self.places: dict[tuple[str, str], dict[Location, list[str]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.user_of: dict[str, str | None] = {
            name: history.user_id for name, history in histories.items()
        }

    def add(
        self,
        kind: ViolationKind,
        message: str,
        *,
        chat_id: str | None = None,
        sequence: int | None = None,
        clients: tuple[str, ...] = (),
    ) -> None:
        violation = Violation(
            kind=kind, message=message, chat_id=chat_id, sequence=sequence, clients=clients
        )
        self.violations.append(violation)

    # ------------------------------------------------------------ collection

    def collect(self) -> None:
        for name, history in self.histories.items():
            sender = history.user_id or UNKNOWN_SENDER
            for send in history.sends:
                if send.outcome != "acked" or send.sequence is None:
                    continue
                content = (sender, send.client_message_id, send.text)
                self.acks.append(
                    _Ack(
                        client=name,
                        chat_id=send.chat_id,
                        sequence=send.sequence,
                        content=content,
                        duplicate=send.duplicate,
                        requested_at_ms=send.requested_at_ms,
                        finished_at_ms=send.finished_at_ms,
                    )
                )
                self.places[(sender, send.client_message_id)][(send.chat_id, send.sequence)].append(
                    f"the send_ack to {name}"
                )
                self.observations += 1
            for record in history.received:
                self._see(name, "received", record.chat_id, ViewEntry.of_record(record))
        for name, chats in self.views.items():
            for chat_id, view in chats.items():
                for entry in view.entries:
                    self._see(name, "final view", chat_id, entry)

    def _see(self, client: str, source: str, chat_id: str, entry: ViewEntry) -> None:
        content = (entry.sender_id, entry.client_message_id, entry.text)
        self.seen[(chat_id, entry.sequence)].append(_Seen(client, source, content))
        self.places[(entry.sender_id, entry.client_message_id)][(chat_id, entry.sequence)].append(
            f"the {source} of {client}"
        )
        self.observations += 1

    # ------------------------------------------------------------ checks

    def check_locations(self) -> None:
        """sequence_conflict and views_diverge (content at one sequence)."""
        acked_at: dict[Location, list[_Ack]] = defaultdict(list)
        for ack in self.acks:
            acked_at[(ack.chat_id, ack.sequence)].append(ack)
        for location in sorted(set(acked_at) | set(self.seen)):
            chat_id, sequence = location
            acks = acked_at.get(location, [])
            seen = self.seen.get(location, [])
            contents = {ack.content for ack in acks} | {s.content for s in seen}
            if acks and len(contents) > 1:
                holders: dict[Content, set[str]] = defaultdict(set)
                for ack in acks:
                    holders[ack.content].add(f"the send_ack to {ack.client}")
                for s in seen:
                    holders[s.content].add(f"the {s.source} of {s.client}")
                described = "; ".join(
                    f"{_describe(content)} in {', '.join(sorted(where))}"
                    for content, where in sorted(holders.items())
                )
                self.add(
                    ViolationKind.SEQUENCE_CONFLICT,
                    f"chat {chat_id} sequence {sequence} was acknowledged for one message but "
                    f"holds another: {described}",
                    chat_id=chat_id,
                    sequence=sequence,
                    clients=tuple(sorted({a.client for a in acks} | {s.client for s in seen})),
                )
            read_contents = {s.content for s in seen}
            if len(read_contents) > 1:
                by_content: dict[Content, set[str]] = defaultdict(set)
                for s in seen:
                    by_content[s.content].add(s.client)
                described = "; ".join(
                    f"{', '.join(sorted(clients))} hold {_describe(content)}"
                    for content, clients in sorted(by_content.items())
                )
                self.add(
                    ViolationKind.VIEWS_DIVERGE,
                    f"members disagree on chat {chat_id} sequence {sequence}: {described}",
                    chat_id=chat_id,
                    sequence=sequence,
                    clients=tuple(sorted({s.client for s in seen})),
                )

    def check_idempotency(self) -> None:
        for (sender, cmid), where in sorted(self.places.items()):
            if len(where) > 1:
                described = "; ".join(
                    f"{chat_id}#{sequence} ({', '.join(sorted(set(sources)))})"
                    for (chat_id, sequence), sources in sorted(where.items())
                )
                self.add(
                    ViolationKind.IDEMPOTENCY_VIOLATED,
                    f"client_message_id {cmid!r} of {sender} is stored at {len(where)} places: "
                    f"{described}",
                    chat_id=sorted(where)[0][0],
                )
        new: dict[tuple[str, str], list[_Ack]] = defaultdict(list)
        for ack in self.acks:
            if ack.duplicate is False:
                new[(ack.content[0], ack.content[1])].append(ack)
        for (sender, cmid), acks in sorted(new.items()):
            if len(acks) > 1:
                self.add(
                    ViolationKind.IDEMPOTENCY_VIOLATED,
                    f"client_message_id {cmid!r} of {sender} was acknowledged {len(acks)} times "
                    f"as a new message (duplicate: false), to "
                    f"{', '.join(sorted({a.client for a in acks}))}",
                    chat_id=acks[0].chat_id,
                    clients=tuple(sorted({a.client for a in acks})),
                )

    def check_streams(self) -> None:
        """Per client: delivery order and exactly-once, ack monotonicity, acks <= delivered."""
        for name, history in self.histories.items():
            last: dict[str, int] = {}
            delivered_max: dict[str, int] = {}
            for record in history.received:
                chat_id, sequence = record.chat_id, record.sequence
                previous = last.get(chat_id)
                if previous is not None and sequence == previous:
                    self.add(
                        ViolationKind.DUPLICATE_DELIVERY,
                        f"{name} delivered chat {chat_id} sequence {sequence} twice",
                        chat_id=chat_id,
                        sequence=sequence,
                        clients=(name,),
                    )
                elif previous is not None and sequence < previous:
                    self.add(
                        ViolationKind.VIEWS_DIVERGE,
                        f"{name} delivered chat {chat_id} sequence {sequence} after {previous}: "
                        "out of the chat's order",
                        chat_id=chat_id,
                        sequence=sequence,
                        clients=(name,),
                    )
                last[chat_id] = max(sequence, previous or 0)
                if record.delivered_at_ms is not None:
                    delivered_max[chat_id] = max(delivered_max.get(chat_id, 0), sequence)
            sent: dict[str, int] = {}
            for ack in history.acks:
                before = sent.get(ack.chat_id)
                if before is not None and ack.sequence < before:
                    self.add(
                        ViolationKind.ACK_REGRESSED,
                        f"{name} acked chat {ack.chat_id} up to {ack.sequence} after acking "
                        f"up to {before}",
                        chat_id=ack.chat_id,
                        sequence=ack.sequence,
                        clients=(name,),
                    )
                sent[ack.chat_id] = max(ack.sequence, before or 0)
                if history.record_messages and history.received:
                    delivered = delivered_max.get(ack.chat_id, 0)
                    start = self._start(name, ack.chat_id)
                    if ack.sequence > max(delivered, start):
                        self.add(
                            ViolationKind.ACK_AHEAD_OF_DELIVERY,
                            f"{name} acked chat {ack.chat_id} up to {ack.sequence} but delivered "
                            f"only up to {max(delivered, start)}",
                            chat_id=ack.chat_id,
                            sequence=ack.sequence,
                            clients=(name,),
                        )
            confirmed: dict[str, int] = {}
            for acked in history.acked:
                before = confirmed.get(acked.chat_id)
                if before is not None and acked.last_acked_sequence < before:
                    self.add(
                        ViolationKind.ACK_REGRESSED,
                        f"the server told {name} that chat {acked.chat_id} is acked up to "
                        f"{acked.last_acked_sequence} after saying {before}",
                        chat_id=acked.chat_id,
                        sequence=acked.last_acked_sequence,
                        clients=(name,),
                    )
                confirmed[acked.chat_id] = max(acked.last_acked_sequence, before or 0)

    def _start(self, client: str, chat_id: str) -> int:
        view = self.views.get(client, {}).get(chat_id)
        return view.after if view is not None else 0

    def check_realtime(self) -> None:
        """A send requested after another send of the chat was acknowledged gets a higher
        sequence (the allocation is linearizable); retries of an earlier send excepted."""
        first_request: dict[tuple[str, str], int] = {}
        for ack in self.acks:
            key = (ack.content[0], ack.content[1])
            first_request.setdefault(key, ack.requested_at_ms)
            first_request[key] = min(first_request[key], ack.requested_at_ms)
        for history in self.histories.values():
            sender = history.user_id or UNKNOWN_SENDER
            for send in history.sends:
                key = (sender, send.client_message_id)
                if key in first_request:
                    first_request[key] = min(first_request[key], send.requested_at_ms)
        by_chat: dict[str, list[_Ack]] = defaultdict(list)
        for ack in self.acks:
            if ack.finished_at_ms is not None:
                by_chat[ack.chat_id].append(ack)
        for chat_id, acks in sorted(by_chat.items()):
            acks.sort(key=lambda a: a.finished_at_ms or 0)
            finished = [a.finished_at_ms or 0 for a in acks]
            best: list[_Ack] = []
            for ack in acks:
                best.append(ack if not best or ack.sequence > best[-1].sequence else best[-1])
            for later in acks:
                requested = first_request[(later.content[0], later.content[1])]
                # The acks that arrived strictly before this send was first requested.
                count = bisect.bisect_left(finished, requested)
                if count == 0:
                    continue
                earlier = best[count - 1]
                if earlier.sequence >= later.sequence and earlier.content != later.content:
                    self.add(
                        ViolationKind.ACK_REGRESSED,
                        f"chat {chat_id}: {_describe(later.content)} was acknowledged to "
                        f"{later.client} with sequence {later.sequence}, but "
                        f"{_describe(earlier.content)} had been acknowledged to {earlier.client} "
                        f"with sequence {earlier.sequence} before it was requested",
                        chat_id=chat_id,
                        sequence=later.sequence,
                        clients=tuple(sorted({earlier.client, later.client})),
                    )

    def check_views(self) -> None:
        acked_by_chat: dict[str, dict[int, list[_Ack]]] = defaultdict(lambda: defaultdict(list))
        for ack in self.acks:
            acked_by_chat[ack.chat_id][ack.sequence].append(ack)
        known: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
        for (chat_id, sequence), seen in self.seen.items():
            for s in seen:
                known[chat_id][sequence].add(s.client)
        for name, chats in sorted(self.views.items()):
            user = self.user_of.get(name)
            for chat_id, view in sorted(chats.items()):
                self._check_view(name, user, chat_id, view, acked_by_chat[chat_id], known[chat_id])

    def _check_view(
        self,
        name: str,
        user: str | None,
        chat_id: str,
        view: ChatView,
        acked: Mapping[int, list[_Ack]],
        known: Mapping[int, set[str]],
    ) -> None:
        sequences = [entry.sequence for entry in view.entries if view.visible(entry.sequence)]
        present = set(sequences)
        self._check_view_order(name, chat_id, view, sequences, present)
        self._check_view_has_acked(name, user, chat_id, view, present, acked)
        top = max(present, default=view.after)
        unseen = sorted(
            sequence
            for sequence, holders in known.items()
            if sequence > top and view.visible(sequence) and sequence not in acked
            if holders - {name}
        )
        if unseen:
            self.add(
                ViolationKind.VIEWS_DIVERGE,
                f"the final view of {name} of chat {chat_id} ends at {top} but other members "
                f"hold sequence(s) {_ranges(unseen)}",
                chat_id=chat_id,
                sequence=unseen[0],
                clients=(name,),
            )

    def _check_view_order(
        self, name: str, chat_id: str, view: ChatView, sequences: list[int], present: set[int]
    ) -> None:
        """Each sequence once, in the chat's order, and none skipped (``present``: the set of
        ``sequences``)."""
        for previous, sequence in itertools.pairwise(sequences):
            if sequence == previous:
                self.add(
                    ViolationKind.DUPLICATE_DELIVERY,
                    f"the final view of {name} holds chat {chat_id} sequence {sequence} twice",
                    chat_id=chat_id,
                    sequence=sequence,
                    clients=(name,),
                )
            elif sequence < previous:
                self.add(
                    ViolationKind.VIEWS_DIVERGE,
                    f"the final view of {name} holds chat {chat_id} sequence {sequence} after "
                    f"{previous}: out of the chat's order",
                    chat_id=chat_id,
                    sequence=sequence,
                    clients=(name,),
                )
        if present:
            holes = [s for s in range(view.after + 1, max(present)) if s not in present]
            if holes:
                self.add(
                    ViolationKind.SEQUENCE_GAP,
                    f"the final view of {name} of chat {chat_id} skips sequence(s) "
                    f"{_ranges(holes)} between {view.after + 1} and {max(present)}",
                    chat_id=chat_id,
                    sequence=holes[0],
                    clients=(name,),
                )

    def _check_view_has_acked(
        self,
        name: str,
        user: str | None,
        chat_id: str,
        view: ChatView,
        present: set[int],
        acked: Mapping[int, list[_Ack]],
    ) -> None:
        """Every acknowledged message the view may show, the member's own ones apart."""
        missing_acked: list[int] = []
        own_missing: list[int] = []
        for sequence, acks in sorted(acked.items()):
            if not view.visible(sequence) or sequence in present:
                continue
            if user is not None and any(a.content[0] == user for a in acks):
                own_missing.append(sequence)
            else:
                missing_acked.append(sequence)
        if own_missing:
            self.add(
                ViolationKind.READ_YOUR_WRITES,
                f"the final view of {name} of chat {chat_id} lacks its own acknowledged "
                f"message(s) at sequence(s) {_ranges(own_missing)}",
                chat_id=chat_id,
                sequence=own_missing[0],
                clients=(name,),
            )
        if missing_acked:
            self.add(
                ViolationKind.ACKED_MESSAGE_MISSING,
                f"the final view of {name} of chat {chat_id} lacks acknowledged message(s) at "
                f"sequence(s) {_ranges(missing_acked)}",
                chat_id=chat_id,
                sequence=missing_acked[0],
                clients=(name,),
            )


def _as_view(value: ChatView | Iterable[ViewEntry]) -> ChatView:
    return value if isinstance(value, ChatView) else ChatView(entries=tuple(value))


def check(
    histories: Mapping[str, History],
    final_views: Mapping[str, Mapping[str, ChatView | Iterable[ViewEntry]]] | None = None,
    *,
    realtime_order: bool = True,
) -> Report:
    """Check the histories (and final views, keyed by the same client names; a name without a
    history is a view of an unknown user, e.g. a REST read) and return every violation found.

    ``realtime_order``: also check that sequences follow the real-time order of sends
    (needs clocks that agree)."""
    views = {
        name: {chat_id: _as_view(view) for chat_id, view in chats.items()}
        for name, chats in (final_views or {}).items()
    }
    checker = _Checker(histories, views, realtime_order)
    checker.collect()
    checker.check_locations()
    checker.check_idempotency()
    checker.check_streams()
    if realtime_order:
        checker.check_realtime()
    checker.check_views()
    chats = {ack.chat_id for ack in checker.acks} | {chat for chat, _ in checker.seen}
    return Report(
        violations=tuple(checker.violations),
        clients=len(set(histories) | set(views)),
        chats=len(chats),
        acked_sends=len(checker.acks),
        observations=checker.observations,
    )
