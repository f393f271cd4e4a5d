"""The durability plane's ports: what its services need from storage and the event log.

The store is deliberately narrow. ``try_append`` is the one operation that allocates a sequence:
the adapter must make it atomic (all of its effects or none) and conditional on the chat's head
being exactly ``expected_head``. The gapless invariant follows from that single rule: a sequence
is taken only together with the message that uses it.
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
    """Messages persisted but not yet confirmed published. ``try_append`` adds the entry in the
    same transaction as the message; the relay clears it once Kafka has the message."""

    async def pending(self, created_before_ms: int, limit: int) -> list[OutboxEntry]: ...

    async def clear(self, entries: Sequence[OutboxEntry]) -> None: ...


class UserDirectory(Protocol):
    """Which user ids exist (identity owns users; durability only asks)."""

    async def missing(self, user_ids: Sequence[str]) -> set[str]: ...
