"""Chats, memberships, history and delivery state.

Membership rules, applied on every path: only active members create messages, add or remove
members; a member sees messages with ``joined_seq < sequence``; a removed member keeps read
access up to ``removed_seq`` and nothing after it. Delivery state is ``(user, chat,
last_acked_sequence)``; it only moves forward and never past what the member can see.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from messaging.domain.errors import (
    Forbidden,
    InvalidInput,
    LimitExceeded,
    NotAMember,
    NotFound,
    chat_not_found,
)
from messaging.domain.ids import check_chat_id, check_user_id, direct_chat_id, new_group_id
from messaging.domain.model import Chat, ChatKind, ChatSummary, HistoryPage, Membership
from messaging.durability.config import (
    HISTORY_MAX_LIMIT,
    SYNC_MAX_LIMIT,
    TITLE_MAX_CHARS,
    DurabilityConfig,
)
from messaging.durability.ports import MessageStore, RemoveOutcome, UserDirectory


class ChatService:
    def __init__(
        self,
        store: MessageStore,
        users: UserDirectory,
        config: DurabilityConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._users = users
        self._config = config
        self._clock = clock

    # ------------------------------------------------------------------ membership checks

    async def member_view(
        self, user_id: str, chat_id: str, *, allow_removed: bool = False
    ) -> tuple[Chat, Membership]:
        """The chat (fresh) and the user's membership, or NotFound (no such chat, or never in it:
        the same answer) / NotAMember (removed)."""
        check_chat_id(chat_id)
        chat = await self._store.get_chat(chat_id)
        if chat is None:
            raise chat_not_found(chat_id)
        membership = await self._store.get_membership(chat_id, user_id)
        if membership is None:
            raise chat_not_found(chat_id)
        if not membership.active and not allow_removed:
            raise NotAMember(f"you are no longer a member of chat {chat_id}")
        return chat, membership

    async def active_members(self, chat_id: str) -> list[str]:
        return [m.user_id for m in await self._store.list_members(chat_id)]

    async def active_memberships(self, chat_id: str) -> list[Membership]:
        """For fanout: who is in the chat now, and from which sequence on."""
        return await self._store.list_members(chat_id)

    # ------------------------------------------------------------------ creating chats

    async def create_direct(self, actor: str, other_user_id: str) -> tuple[Chat, bool]:
        check_user_id(other_user_id)
        if other_user_id == actor:
            raise InvalidInput("a 1:1 chat needs another user")
        await self._require_users([other_user_id])
        chat_id = direct_chat_id(actor, other_user_id)
        if await self._store.get_chat(chat_id) is None:
            await self._check_chat_counts([actor, other_user_id])
        chat = Chat(
            chat_id=chat_id,
            kind=ChatKind.DIRECT,
            title="",
            created_by=actor,
            created_at_ms=self._now_ms(),
        )
        members = [
            Membership(chat_id=chat.chat_id, user_id=user, joined_seq=0)
            for user in sorted({actor, other_user_id})
        ]
        return await self._store.create_chat(chat, members)

    async def create_group(self, actor: str, title: str, member_ids: Sequence[str]) -> Chat:
        title = title.strip()
        if not 1 <= len(title) <= TITLE_MAX_CHARS:
            raise InvalidInput(f"title must be 1 to {TITLE_MAX_CHARS} characters")
        for user in member_ids:
            check_user_id(user)
        members = sorted({actor, *member_ids})
        self._check_group_size(len(members))
        await self._require_users([u for u in members if u != actor])
        await self._check_chat_counts(members)
        chat = Chat(
            chat_id=new_group_id(),
            kind=ChatKind.GROUP,
            title=title,
            created_by=actor,
            created_at_ms=self._now_ms(),
        )
        created, _ = await self._store.create_chat(
            chat, [Membership(chat_id=chat.chat_id, user_id=u, joined_seq=0) for u in members]
        )
        return created

    async def add_members(self, actor: str, chat_id: str, user_ids: Sequence[str]) -> list[str]:
        """Add users to a group; they see messages from the current head on. Returns who was
        added (users already active are left as they are)."""
        chat, _ = await self.member_view(actor, chat_id)
        self._require_group(chat)
        for user in user_ids:
            check_user_id(user)
        current = set(await self.active_members(chat_id))
        new = sorted(set(user_ids) - current)
        self._check_group_size(len(current) + len(new))
        await self._require_users(new)
        await self._check_chat_counts(new)
        for user in new:
            await self._store.put_membership(
                Membership(chat_id=chat_id, user_id=user, joined_seq=chat.head)
            )
        return new

    async def remove_member(self, actor: str, chat_id: str, user_id: str) -> int:
        """Remove a member (or leave, when ``user_id`` is the actor); returns the removal point:
        the member sees nothing after this sequence."""
        chat, _ = await self.member_view(actor, chat_id)
        self._require_group(chat)
        check_user_id(user_id)
        while True:
            outcome = await self._store.remove_membership(chat_id, user_id, chat.head)
            if outcome is RemoveOutcome.REMOVED:
                return chat.head
            if outcome is RemoveOutcome.NOT_A_MEMBER:
                raise NotFound(f"user {user_id} is not a member of chat {chat_id}")
            fresh = await self._store.get_chat(chat_id)
            assert fresh is not None
            chat = fresh

    # ------------------------------------------------------------------ reading

    async def list_chats(self, user_id: str) -> list[ChatSummary]:
        memberships = {m.chat_id: m for m in await self._store.list_memberships_of(user_id)}
        chats = await self._store.get_chats(list(memberships))
        acked = await self._store.get_last_acked(user_id, list(chats))
        summaries = [
            ChatSummary(
                chat=chat,
                membership=memberships[chat_id],
                last_acked_sequence=acked.get(chat_id, 0),
            )
            for chat_id, chat in chats.items()
        ]
        summaries.sort(
            key=lambda s: (s.chat.last_message_at_ms, s.chat.created_at_ms), reverse=True
        )
        return summaries

    async def history(
        self,
        user_id: str,
        chat_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        """Messages in sequence order: after a sequence (the next page going forward) or before
        one (the previous page going back; the newest page when neither is given)."""
        if not 1 <= limit <= HISTORY_MAX_LIMIT:
            raise InvalidInput(f"limit must be from 1 to {HISTORY_MAX_LIMIT}")
        return await self._page(user_id, chat_id, after=after, before=before, limit=limit)

    async def messages_after(
        self, user_id: str, chat_id: str, after: int, limit: int
    ) -> HistoryPage:
        """The catch-up read: messages with sequence > ``after`` the member may see (pages of
        up to ``SYNC_MAX_LIMIT``)."""
        if not 1 <= limit <= SYNC_MAX_LIMIT:
            raise InvalidInput(f"limit must be from 1 to {SYNC_MAX_LIMIT}")
        return await self._page(user_id, chat_id, after=after, before=None, limit=limit)

    async def _page(
        self, user_id: str, chat_id: str, *, after: int | None, before: int | None, limit: int
    ) -> HistoryPage:
        chat, membership = await self.member_view(user_id, chat_id, allow_removed=True)
        visible_low = membership.joined_seq + 1
        visible_head = membership.visible_until(chat.head)
        low = max(visible_low, (after or 0) + 1)
        high = visible_head if before is None else min(visible_head, before - 1)
        if low > high:
            return HistoryPage(
                chat_id=chat_id, messages=[], visible_head=visible_head, has_more=False
            )
        if after is not None:
            messages = await self._store.read_messages(chat_id, low, high, limit=limit)
            has_more = bool(messages) and messages[-1].sequence < high
        else:
            newest_first = await self._store.read_messages(
                chat_id, low, high, limit=limit, descending=True
            )
            messages = list(reversed(newest_first))
            has_more = bool(messages) and messages[0].sequence > low
        return HistoryPage(
            chat_id=chat_id, messages=messages, visible_head=visible_head, has_more=has_more
        )

    # ------------------------------------------------------------------ delivery state

    async def ack(self, user_id: str, chat_id: str, sequence: int) -> int:
        """Record delivery up to ``sequence`` now (one write); returns the stored
        last_acked_sequence. The gateway's acks go through :class:`DeliveryAcks` instead, which
        coalesces them (ADR 0025)."""
        await self.check_ack(user_id, chat_id, sequence)
        return await self._store.advance_last_acked(user_id, chat_id, sequence)

    async def check_ack(self, user_id: str, chat_id: str, sequence: int) -> None:
        """Refuse an ack past what the member can see (or of a chat they were never in)."""
        if sequence < 0:
            raise InvalidInput("sequence must not be negative")
        chat, membership = await self.member_view(user_id, chat_id, allow_removed=True)
        visible = membership.visible_until(chat.head)
        if sequence > visible:
            raise InvalidInput(f"sequence {sequence} is past the chat head {visible}")

    async def ack_delivered(self, user_id: str, chat_id: str, sequence: int) -> int:
        """``ack`` without the visibility reads, for a sequence the caller sent this user on a
        live connection (a push, a replay, their own send or a ``sync_complete`` head): it was
        visible to them then, and what was visible stays visible (removal only ends visibility
        after its point; ADR 0015)."""
        check_chat_id(chat_id)
        if sequence < 1:
            raise InvalidInput("sequence must be positive")
        return await self._store.advance_last_acked(user_id, chat_id, sequence)

    # ------------------------------------------------------------------ helpers

    async def _require_users(self, user_ids: Sequence[str]) -> None:
        if not user_ids:
            return
        missing = await self._users.missing(user_ids)
        if missing:
            raise NotFound(f"unknown user(s): {', '.join(sorted(missing))}")

    def _check_group_size(self, count: int) -> None:
        if count > self._config.max_group_members:
            raise LimitExceeded(
                f"a group has at most {self._config.max_group_members} members ({count} asked)",
                "group_members",
            )

    async def _check_chat_counts(self, user_ids: Sequence[str]) -> None:
        """Refuse a new chat or membership for a user already in ``max_chats_per_user`` chats.

        Counted from the by-user index, which may lag a moment behind a chat just created: the
        limit is approximate under concurrent creations, which is enough to stop abuse."""
        limit = self._config.max_chats_per_user
        gate = asyncio.Semaphore(16)

        async def full(user_id: str) -> bool:
            async with gate:
                return len(await self._store.list_memberships_of(user_id)) >= limit

        async with asyncio.TaskGroup() as group:
            checks = {u: group.create_task(full(u)) for u in user_ids}
        over = sorted(u for u, check in checks.items() if check.result())
        if over:
            raise LimitExceeded(
                f"user(s) {', '.join(over)} already in {limit} chats, the most allowed",
                "chats_per_user",
            )

    @staticmethod
    def _require_group(chat: Chat) -> None:
        if chat.kind is not ChatKind.GROUP:
            raise Forbidden("1:1 chats have fixed members")

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)
