"""What the connection plane asks of the durability plane."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from messaging.domain.errors import MessagingError
from messaging.domain.model import ChatSummary, HistoryPage, SendResult


class MessageIngest(Protocol):
    async def send(
        self, *, sender_id: str, sender_device: str, chat_id: str, client_message_id: str, text: str
    ) -> SendResult: ...


class ConversationReader(Protocol):
    async def messages_after(
        self, user_id: str, chat_id: str, after: int, limit: int
    ) -> HistoryPage: ...

    async def ack(self, user_id: str, chat_id: str, sequence: int) -> int: ...

    async def ack_delivered(self, user_id: str, chat_id: str, sequence: int) -> int:
        """``ack`` of a sequence the caller itself sent this user (so it is visible to them)."""
        ...

    async def list_chats(self, user_id: str) -> list[ChatSummary]: ...


class DeliveryAckSink(Protocol):
    """Takes delivery acks without waiting for the store (ADR 0025)."""

    def submit(
        self,
        user_id: str,
        chat_id: str,
        sequence: int,
        *,
        delivered: bool,
        reply: Callable[[int | MessagingError], None],
    ) -> None:
        """Returns at once; ``reply`` gets the stored last_acked_sequence (or the error) once the
        coalesced write landed. ``delivered``: the caller sent the user this sequence. Raises a
        ``MessagingError`` at once for malformed input or when too many acks wait."""
        ...
