"""The durable model: chats, memberships, messages, delivery state."""

from __future__ import annotations

import enum

import attrs


class ChatKind(enum.StrEnum):
    DIRECT = "direct"
    GROUP = "group"


@attrs.frozen(kw_only=True)
class Chat:
    chat_id: str
    kind: ChatKind
    title: str
    created_by: str
    created_at_ms: int
    head: int = 0
    """The highest sequence stored in this chat; sequences are exactly 1..head."""
    last_message_at_ms: int = 0


@attrs.frozen(kw_only=True)
class Membership:
    chat_id: str
    user_id: str
    joined_seq: int
    """The member sees messages with sequence > joined_seq."""
    removed_seq: int | None = None
    """Set on removal: the member sees nothing after this sequence."""

    @property
    def active(self) -> bool:
        return self.removed_seq is None

    def visible_until(self, head: int) -> int:
        return head if self.removed_seq is None else min(head, self.removed_seq)


@attrs.frozen(kw_only=True)
class Message:
    chat_id: str
    sequence: int
    sender_id: str
    sender_device: str
    client_message_id: str
    text: str
    created_at_ms: int


@attrs.frozen(kw_only=True)
class IdempotencyRecord:
    """What a (sender, client_message_id) produced: retries get the same answer."""

    sender_id: str
    client_message_id: str
    chat_id: str
    sequence: int
    text_sha256: str
    expires_at: int

    @property
    def key(self) -> str:
        return idempotency_key(self.sender_id, self.client_message_id)


def idempotency_key(sender_id: str, client_message_id: str) -> str:
    return f"{sender_id}#{client_message_id}"


@attrs.frozen(kw_only=True)
class SendResult:
    message: Message
    duplicate: bool
    """True when this was a retry of an earlier send: nothing new was stored."""


@attrs.frozen(kw_only=True)
class ChatSummary:
    chat: Chat
    membership: Membership
    last_acked_sequence: int

    @property
    def visible_head(self) -> int:
        return self.membership.visible_until(self.chat.head)

    @property
    def unread(self) -> int:
        floor = max(self.last_acked_sequence, self.membership.joined_seq)
        return max(0, self.visible_head - floor)


@attrs.frozen(kw_only=True)
class HistoryPage:
    chat_id: str
    messages: list[Message]
    visible_head: int
    """The highest sequence this member may see (the chat head, or the removal point)."""
    has_more: bool
