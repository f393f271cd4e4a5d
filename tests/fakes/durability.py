"""In-memory ``MessageStore`` and ``UserDirectory``: the same contract as the DynamoDB adapter
(tests/contract/test_message_store.py runs one suite against both)."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from messaging.domain.model import Chat, IdempotencyRecord, Membership, Message
from messaging.durability.ports import (
    Append,
    AppendOutcome,
    BatchOutcome,
    HeadClaim,
    OutboxEntry,
    RemoveOutcome,
    check_batch,
    single_outcome,
)


class InMemoryMessageStore:
    """Each method runs without awaiting in its critical part, so it is atomic under asyncio."""

    def __init__(self) -> None:
        self.chats: dict[str, Chat] = {}
        self.memberships: dict[tuple[str, str], Membership] = {}
        self.messages: dict[tuple[str, int], Message] = {}
        self.idempotency: dict[str, IdempotencyRecord] = {}
        self.acked: dict[tuple[str, str], int] = {}
        self.outbox: dict[tuple[str, int], OutboxEntry] = {}
        self.claims: dict[str, tuple[str, int]] = {}
        """Per chat, the head claim (writer, until_ms) (ADR 0034)."""
        self.batches: list[int] = []
        """The size of every ``append_batch`` call, in order (tests check group commit)."""
        self.now: float = 0.0
        """Seconds; expired idempotency records may be replaced, as with the DynamoDB TTL."""

    async def get_chat(self, chat_id: str) -> Chat | None:
        return self.chats.get(chat_id)

    async def get_chats(self, chat_ids: Sequence[str]) -> dict[str, Chat]:
        return {c: self.chats[c] for c in chat_ids if c in self.chats}

    async def create_chat(self, chat: Chat, members: Sequence[Membership]) -> tuple[Chat, bool]:
        for member in members:
            self.memberships[(member.chat_id, member.user_id)] = member
        if chat.chat_id in self.chats:
            return self.chats[chat.chat_id], False
        stored = attrs.evolve(chat, head=0, last_message_at_ms=0)
        self.chats[chat.chat_id] = stored
        return stored, True

    async def get_membership(self, chat_id: str, user_id: str) -> Membership | None:
        return self.memberships.get((chat_id, user_id))

    async def list_members(self, chat_id: str) -> list[Membership]:
        return sorted(
            (m for (c, _), m in self.memberships.items() if c == chat_id and m.active),
            key=lambda m: m.user_id,
        )

    async def list_memberships_of(self, user_id: str) -> list[Membership]:
        return [m for (_, u), m in self.memberships.items() if u == user_id and m.active]

    async def put_membership(self, membership: Membership) -> None:
        self.memberships[(membership.chat_id, membership.user_id)] = membership

    async def remove_membership(
        self, chat_id: str, user_id: str, expected_head: int
    ) -> RemoveOutcome:
        chat = self.chats.get(chat_id)
        if chat is None or chat.head != expected_head:
            return RemoveOutcome.HEAD_MOVED
        member = self.memberships.get((chat_id, user_id))
        if member is None or not member.active:
            return RemoveOutcome.NOT_A_MEMBER
        self.memberships[(chat_id, user_id)] = attrs.evolve(member, removed_seq=expected_head)
        return RemoveOutcome.REMOVED

    async def get_idempotency(self, key: str) -> IdempotencyRecord | None:
        return self.idempotency.get(key)

    async def try_append(
        self, message: Message, expected_head: int, record: IdempotencyRecord
    ) -> AppendOutcome:
        outcome = await self.append_batch(message.chat_id, expected_head, [Append(message, record)])
        return single_outcome(outcome)

    async def claim_head(
        self, chat_id: str, writer: str, now_ms: int, until_ms: int
    ) -> HeadClaim | None:
        chat = self.chats.get(chat_id)
        if chat is None:
            return None
        holder, until = self.claims.get(chat_id, ("", 0))
        if holder and holder != writer and until >= now_ms:
            return HeadClaim(head=chat.head, claimed=False, until_ms=until)
        self.claims[chat_id] = (writer, until_ms)
        return HeadClaim(head=chat.head, claimed=True, until_ms=until_ms)

    async def append_batch(
        self,
        chat_id: str,
        expected_head: int,
        appends: Sequence[Append],
        *,
        writer: str = "",
        now_ms: int = 0,
    ) -> BatchOutcome:
        check_batch(chat_id, expected_head, appends)
        self.batches.append(len(appends))
        # Every condition is evaluated, as DynamoDB reports a reason for each item.
        rejected: dict[int, AppendOutcome] = {}
        for index, append in enumerate(appends):
            message, record = append.message, append.record
            existing = self.idempotency.get(record.key)
            if existing is not None and existing.expires_at >= message.created_at_ms // 1000:
                rejected[index] = AppendOutcome.DUPLICATE_KEY
                continue
            member = self.memberships.get((chat_id, message.sender_id))
            if member is None or not member.active:
                rejected[index] = AppendOutcome.NOT_A_MEMBER
        chat = self.chats.get(chat_id)
        holder, until = self.claims.get(chat_id, ("", 0))
        claimed = bool(holder) and holder != writer and until >= now_ms
        head_moved = (
            chat is None
            or chat.head != expected_head
            or claimed
            or any((chat_id, a.message.sequence) in self.messages for a in appends)
        )
        if rejected or head_moved:
            blocked = chat is not None and (chat.head != expected_head or claimed)
            return BatchOutcome(
                rejected=rejected,
                head_moved=head_moved,
                head=chat.head if blocked and chat is not None else None,
                claimed_until_ms=until if claimed and chat is not None else None,
            )
        self.claims.pop(chat_id, None)
        assert chat is not None
        last = appends[-1].message
        self.chats[chat_id] = attrs.evolve(
            chat, head=last.sequence, last_message_at_ms=last.created_at_ms
        )
        for append in appends:
            message = append.message
            self.messages[(chat_id, message.sequence)] = message
            self.idempotency[append.record.key] = append.record
            self.outbox[(chat_id, message.sequence)] = OutboxEntry(
                chat_id, message.sequence, message.created_at_ms
            )
        return BatchOutcome()

    async def read_messages(
        self, chat_id: str, low: int, high: int, *, limit: int, descending: bool = False
    ) -> list[Message]:
        sequences = range(high, low - 1, -1) if descending else range(low, high + 1)
        found = [self.messages[(chat_id, s)] for s in sequences if (chat_id, s) in self.messages]
        return found[:limit]

    async def get_last_acked(self, user_id: str, chat_ids: Sequence[str]) -> dict[str, int]:
        return {c: self.acked[(user_id, c)] for c in chat_ids if (user_id, c) in self.acked}

    async def advance_last_acked(self, user_id: str, chat_id: str, sequence: int) -> int:
        current = self.acked.get((user_id, chat_id))
        if current is None or current < sequence:
            self.acked[(user_id, chat_id)] = sequence
            return sequence
        return current


class InMemoryOutbox:
    """The outbox view of an :class:`InMemoryMessageStore`."""

    def __init__(self, store: InMemoryMessageStore) -> None:
        self.store = store

    async def pending(self, created_before_ms: int, limit: int) -> list[OutboxEntry]:
        entries = sorted(
            (e for e in self.store.outbox.values() if e.created_at_ms < created_before_ms),
            key=lambda e: (e.created_at_ms, e.chat_id, e.sequence),
        )
        return entries[:limit]

    async def clear(self, entries: Sequence[OutboxEntry]) -> None:
        for entry in entries:
            self.store.outbox.pop((entry.chat_id, entry.sequence), None)


class RecordingPublisher:
    """A ``MessagePublisher`` that records, and can be told to fail."""

    def __init__(self) -> None:
        self.published: list[Message] = []
        self.fail = False

    async def publish(self, messages: Sequence[Message]) -> None:
        if self.fail:
            raise ConnectionError("the event log is down")
        self.published.extend(messages)


class FakeUserDirectory:
    def __init__(self, users: Sequence[str] = ()) -> None:
        self.users = set(users)

    async def missing(self, user_ids: Sequence[str]) -> set[str]:
        return set(user_ids) - self.users
