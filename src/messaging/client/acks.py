"""Delivery and acks: messages released in order to the application's queue, the highest
delivered sequence per chat acked in batches (part of
:class:`~messaging.client.connection.ChatClient`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from messaging.client.errors import ClientClosed
from messaging.client.history import now_ms
from messaging.client.state import ClientCore, Inbound
from messaging.domain.model import Message
from messaging.protocol import frames


class Acks(ClientCore):
    """Delivery to the application, in order, and acks of what it took."""

    async def next_message(self) -> Message:
        """The next message, in sequence order per chat; it counts as delivered (and is acked).

        Raises the client's failure (AuthRejected, ClientClosed) once the queue is empty.
        """
        if self._failure is not None and self._queue.empty():
            raise self._failure
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # wake the next reader too
            assert self._failure is not None
            raise self._failure
        message, record = item
        if record is not None:
            record.delivered_at_ms = now_ms()
        chat = self._chats.get(message.chat_id)
        if chat is not None and message.sequence > chat.consumed:
            chat.consumed = message.sequence
            if self._ack_due is None:
                self._ack_due = time.monotonic() + self.options.ack_interval
                self._schedule(self._ack_due)
        return message

    async def messages(self) -> AsyncIterator[Message]:
        """Every message, in sequence order per chat, until the client is closed (then it
        ends) or fails (then it raises). Use one consumer at a time."""
        while True:
            try:
                message = await self.next_message()
            except ClientClosed:
                return
            yield message

    def delivered_sequence(self, chat_id: str) -> int:
        """Highest sequence of ``chat_id`` released to the application's queue (or skipped)."""
        chat = self._chats.get(chat_id)
        return chat.enqueued if chat is not None else 0

    def known_chats(self) -> dict[str, int]:
        return {chat.chat_id: chat.enqueued for chat in self._chats.values()}

    async def wait_for(
        self,
        chat_id: str,
        sequence: int,
        timeout: float | None = 10.0,  # noqa: ASYNC109 (a test helper: a deadline is the point)
    ) -> None:
        """Wait until every message of ``chat_id`` up to ``sequence`` is in the queue (in order).

        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        self._raise_if_failed()
        chat = self._chat(chat_id)
        if chat.enqueued >= sequence:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (sequence, future)
        chat.waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await self._wait(future, None)
        finally:
            if entry in chat.waiters:
                chat.waiters.remove(entry)

    async def _on_message(self, frame: frames.MessageFrame) -> None:
        message = frame.to_message()
        replay = frame.replay
        if replay:
            self._touch_discovery()
        chat = self._chat(message.chat_id)
        chat.removed = False
        before = chat.buffer.duplicates
        released = chat.buffer.receive(Inbound(message, now_ms(), replay))
        if chat.buffer.duplicates != before:
            self.stats.duplicates += 1
            self.history.duplicates[chat.chat_id] += 1
        await self._release(chat, released)

    def _on_acked(self, chat_id: str, confirmed: int) -> None:
        chat = self._chat(chat_id)
        chat.ack_confirmed = max(chat.ack_confirmed, confirmed)
        self.history.acked_received(chat.chat_id, confirmed)

    async def _flush_acks(self, now: float, epoch: int) -> None:
        if self._ack_due is None:
            return
        if now < self._ack_due:
            self._schedule(self._ack_due)
            return
        self._ack_due = None
        for chat in list(self._chats.values()):
            if chat.consumed > chat.ack_sent and not chat.removed:
                chat.ack_sent = chat.consumed
                self.history.ack_sent(chat.chat_id, chat.consumed)
                ack = frames.Ack(chat_id=chat.chat_id, sequence=chat.consumed)
                if not await self._write(epoch, ack):
                    return
