"""The durability plane's ports: what its services need from storage and the event log.

The store is deliberately narrow. ``append_batch`` (and ``try_append``, its batch of one) is the
one operation that allocates sequences: the adapter must make it atomic (all of its effects or
none) and conditional on the chat's head being exactly ``expected_head``. The gapless invariant
follows from that single rule: a sequence is taken only together with the message that uses it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

import attrs

from messaging.domain.model import Chat, IdempotencyRecord, Membership, Message


class AppendOutcome(enum.Enum):
    APPENDED = "appended"
    HEAD_MOVED = "head_moved"
    """Another writer appended first; re-read the head and try again."""
    DUPLICATE_KEY = "duplicate_key"
    """The idempotency key exists: this send was stored before."""
    NOT_A_MEMBER = "not_a_member"
    """The sender is not an active member at the moment of the write."""


TRANSACTION_MAX_ITEMS = 100
"""DynamoDB's limit on the items of one ``TransactWriteItems``."""
TRANSACTION_MAX_BYTES = 4 * 1024 * 1024
"""DynamoDB's limit on the aggregate size of one transaction."""


@attrs.frozen
class Append:
    """One message of a batch append, with its idempotency record."""

    message: Message
    record: IdempotencyRecord


def transaction_items(appends: Sequence[Append]) -> int:
    """Items of the append transaction: the head update, per message its Put, idempotency Put
    and outbox Put, and one membership ConditionCheck per distinct sender (a transaction may
    not name one item twice)."""
    return 1 + 3 * len(appends) + len({a.message.sender_id for a in appends})


def append_bytes(append: Append) -> int:
    """An upper estimate of what one message adds to the transaction's size: the text twice
    (message item and a margin), every other value and all attribute names."""
    message = append.message
    strings = (
        message.chat_id,
        message.sender_id,
        message.sender_device,
        message.client_message_id,
        append.record.key,
        append.record.text_sha256,
    )
    return 2 * len(message.text.encode()) + 3 * sum(len(s.encode()) for s in strings) + 1024


def check_batch(chat_id: str, expected_head: int, appends: Sequence[Append]) -> None:
    """The preconditions of ``append_batch``; raises ``ValueError`` (a programming error)."""
    if not appends:
        raise ValueError("an append batch holds at least one message")
    for offset, append in enumerate(appends, start=1):
        if append.message.chat_id != chat_id or append.record.chat_id != chat_id:
            raise ValueError("every message of a batch belongs to its chat")
        if append.message.sequence != expected_head + offset:
            raise ValueError("a batch's sequences follow the expected head without a gap")
        if append.record.sequence != append.message.sequence:
            raise ValueError("an idempotency record names its message's sequence")
    if len({a.record.key for a in appends}) != len(appends):
        raise ValueError("a batch holds each idempotency key once")
    if transaction_items(appends) > TRANSACTION_MAX_ITEMS:
        raise ValueError(f"a batch is at most {TRANSACTION_MAX_ITEMS} transaction items")
    if sum(map(append_bytes, appends)) > TRANSACTION_MAX_BYTES:
        raise ValueError(f"a batch is at most {TRANSACTION_MAX_BYTES} bytes")


@attrs.frozen
class BatchOutcome:
    """What ``append_batch`` did: everything (``rejected`` empty, ``head_moved`` false) or
    nothing. ``rejected`` names the messages, by index in the batch, whose own condition failed
    (``DUPLICATE_KEY`` or ``NOT_A_MEMBER``): retry without them. ``head_moved`` alone: another
    writer appended first (or a concurrent transaction conflicted); re-read the head."""

    rejected: dict[int, AppendOutcome] = attrs.field(factory=dict)
    head_moved: bool = False
    head: int | None = None
    """With ``head_moved``: the chat's head as the failed transaction saw it, when the store
    said (ADR 0034: the next attempt needs no read of its own); ``None``: re-read it."""
    claimed_until_ms: int | None = None
    """With ``head_moved``: another writer holds the chat's head claim until then (ADR 0034):
    wait for it to append (or the claim to lapse), then retry."""

    @property
    def appended(self) -> bool:
        return not self.rejected and not self.head_moved


@attrs.frozen
class HeadClaim:
    """What :meth:`MessageStore.claim_head` found: the head, and whether the claim is the
    caller's (else another writer's, held until ``until_ms``)."""

    head: int
    claimed: bool
    until_ms: int


def single_outcome(outcome: BatchOutcome) -> AppendOutcome:
    """A batch of one's outcome as ``try_append`` reports it."""
    if outcome.rejected:
        return next(iter(outcome.rejected.values()))
    return AppendOutcome.HEAD_MOVED if outcome.head_moved else AppendOutcome.APPENDED


class RemoveOutcome(enum.Enum):
    REMOVED = "removed"
    HEAD_MOVED = "head_moved"
    NOT_A_MEMBER = "not_a_member"


class MessageStore(Protocol):
    async def get_chat(self, chat_id: str) -> Chat | None: ...

    async def get_chats(self, chat_ids: Sequence[str]) -> dict[str, Chat]: ...

    async def create_chat(self, chat: Chat, members: Sequence[Membership]) -> tuple[Chat, bool]:
        """Store the chat and its members; if the chat id exists, return the stored chat.
        The flag says whether this call created it."""
        ...

    async def get_membership(self, chat_id: str, user_id: str) -> Membership | None: ...

    async def list_members(self, chat_id: str) -> list[Membership]:
        """Active members only."""
        ...

    async def list_memberships_of(self, user_id: str) -> list[Membership]:
        """Active memberships of a user."""
        ...

    async def put_membership(self, membership: Membership) -> None:
        """Add or re-add a member (overwrites a removed membership)."""
        ...

    async def remove_membership(
        self, chat_id: str, user_id: str, expected_head: int
    ) -> RemoveOutcome:
        """Atomically: if the head is still ``expected_head``, mark the member removed at it."""
        ...

    async def get_idempotency(self, key: str) -> IdempotencyRecord | None: ...

    async def try_append(
        self, message: Message, expected_head: int, record: IdempotencyRecord
    ) -> AppendOutcome:
        """Atomically: head ``expected_head`` -> ``message.sequence`` (= expected + 1), store the
        message, its idempotency record and its outbox entry, provided the sender is an active
        member."""
        ...

    async def append_batch(
        self,
        chat_id: str,
        expected_head: int,
        appends: Sequence[Append],
        *,
        writer: str = "",
        now_ms: int = 0,
    ) -> BatchOutcome:
        """Atomically: head ``expected_head`` -> ``expected_head + len(appends)``, store every
        message (sequences ``expected_head + 1 ..`` in order), its idempotency record and its
        outbox entry, provided every sender is an active member and no writer other than
        ``writer`` holds a head claim live at ``now_ms``; or nothing. A successful append
        clears the claim. Preconditions (:func:`check_batch`, ``ValueError``): one chat,
        consecutive sequences, distinct keys, within DynamoDB's transaction limits (100 items,
        4 MB)."""
        ...

    async def claim_head(
        self, chat_id: str, writer: str, now_ms: int, until_ms: int
    ) -> HeadClaim | None:
        """Claim the chat's next append for ``writer`` until ``until_ms`` unless another
        writer's claim is live at ``now_ms`` (ADR 0034: a writer that keeps losing the head
        race gets its turn); the head either way. ``None``: no such chat."""
        ...

    async def read_messages(
        self, chat_id: str, low: int, high: int, *, limit: int, descending: bool = False
    ) -> list[Message]:
        """Messages with ``low <= sequence <= high``, at most ``limit``, in sequence order
        (ascending, or descending from ``high``)."""
        ...

    async def get_last_acked(self, user_id: str, chat_ids: Sequence[str]) -> dict[str, int]: ...

    async def advance_last_acked(self, user_id: str, chat_id: str, sequence: int) -> int:
        """Move last_acked forward to ``sequence`` if it is behind; return the stored value."""
        ...


class MessagePublisher(Protocol):
    """Publishes persisted messages to the event log (Kafka), keyed by chat, in the order given;
    returns once the log has acknowledged every one (raises if it did not)."""

    async def publish(self, messages: Sequence[Message]) -> None: ...


@attrs.frozen
class OutboxEntry:
    chat_id: str
    sequence: int
    created_at_ms: int


class Outbox(Protocol):
    """Messages persisted but not yet confirmed published. ``append_batch`` adds the entry in the
    same transaction as the message; the relay clears it once Kafka has the message."""

    async def pending(self, created_before_ms: int, limit: int) -> list[OutboxEntry]: ...

    async def clear(self, entries: Sequence[OutboxEntry]) -> None: ...


class UserDirectory(Protocol):
    """Which user ids exist (identity owns users; durability only asks)."""

    async def missing(self, user_ids: Sequence[str]) -> set[str]: ...
