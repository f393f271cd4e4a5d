"""Sends: pending until their ``send_ack`` or a non-retriable ``error``, written again with the
same ``client_message_id`` after a reconnect, a retriable error or a missing answer, expired
after ``send_max_age`` (part of :class:`~messaging.client.connection.ChatClient`)."""

from __future__ import annotations

import asyncio
import time

from messaging.client.errors import SendExpired, SendRejected
from messaging.client.history import now_ms
from messaging.client.state import (
    CLIENT_MESSAGE_ID,
    DEFAULT_MAX_FRAME_BYTES,
    ClientCore,
    PendingSend,
    SendResult,
    mark_retrieved,
    text_of,
)
from messaging.protocol import frames


class Sends(ClientCore):
    """Sends, from ``submit`` to their ``send_ack`` or failure."""

    def new_client_message_id(self) -> str:
        self._id_counter += 1
        return f"{self._id_prefix}-{self._id_counter}"

    def submit(
        self, chat_id: str, text: str, client_message_id: str | None = None
    ) -> asyncio.Future[SendResult]:
        """Queue a send; the future resolves with its :class:`SendResult` (see :meth:`send`)."""
        self._raise_if_failed()
        if not text:
            raise ValueError("text must not be empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text is not valid UTF-8 (lone surrogate)") from None
        cmid = client_message_id or self.new_client_message_id()
        if not CLIENT_MESSAGE_ID.match(cmid):
            raise ValueError("client_message_id must be 1-64 of A-Za-z0-9_-.:")
        if cmid in self._pending:
            raise ValueError(f"client_message_id {cmid!r} is already being sent")
        frame = self._send_frame(chat_id, cmid, text)
        max_frame = self.limits.get("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES)
        if len(frame.encode()) > max_frame:
            raise ValueError(f"the send_message frame would exceed {max_frame} bytes")
        future: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        future.add_done_callback(mark_retrieved)
        self._pending[cmid] = PendingSend(
            chat_id=chat_id,
            client_message_id=cmid,
            text=text,
            future=future,
            record=self.history.send_requested(chat_id, cmid, text),
            created=time.monotonic(),
        )
        self._schedule(0.0)
        return future

    async def send(
        self, chat_id: str, text: str, client_message_id: str | None = None
    ) -> SendResult:
        """Send and wait for the ``send_ack``, across reconnects and retriable errors.

        Raises :class:`SendRejected` (non-retriable error), :class:`SendExpired`,
        :class:`AuthRejected` or :class:`ClientClosed`. Cancelling the caller does not cancel
        the send.
        """
        return await asyncio.shield(self.submit(chat_id, text, client_message_id))

    def _on_send_ack(self, frame: frames.SendAck) -> None:
        pending = self._pending.pop(frame.client_message_id, None)
        if pending is None:
            return  # the answer to a resend of a send already answered
        result = SendResult(
            chat_id=pending.chat_id,
            client_message_id=pending.client_message_id,
            sequence=frame.sequence,
            duplicate=frame.duplicate,
            created_at_ms=frame.created_at_ms,
            attempts=pending.record.attempts,
        )
        record = pending.record
        record.outcome = "acked"
        record.sequence = result.sequence
        record.duplicate = result.duplicate
        record.created_at_ms = result.created_at_ms
        record.finished_at_ms = now_ms()
        record.finished_mono = time.monotonic()
        if not pending.future.done():
            pending.future.set_result(result)

    def _on_send_error(
        self, pending: PendingSend, frame: frames.Error, *, retriable: bool, advised_s: float
    ) -> None:
        """A pending send answered with an error: retried after a backoff (at least the
        advised delay), or failed with :class:`SendRejected`."""
        code = frame.code.value
        pending.record.errors.append(code)
        if retriable:
            delay = max(advised_s, self.options.backoff(pending.retries, self._rng))
            pending.due = time.monotonic() + delay
            pending.retries += 1
            self._schedule(pending.due)
        else:
            self._finish_send(pending, SendRejected(code, frame.message), outcome="rejected")

    def _expire_sends(self, now: float) -> None:
        max_age = self.options.send_max_age
        for pending in list(self._pending.values()):
            age = now - pending.created
            if age >= max_age:
                self._finish_send(
                    pending, SendExpired(pending.client_message_id, age), outcome="expired"
                )
            else:
                self._schedule(pending.created + max_age)

    async def _write_sends(self, now: float, epoch: int) -> bool:
        timeout = self.options.send_ack_timeout
        for pending in list(self._pending.values()):
            if pending.future.done():
                continue
            if pending.due is None:
                if now < pending.sent_at + timeout:
                    self._schedule(pending.sent_at + timeout)
                    continue
            elif pending.due > now:
                self._schedule(pending.due)
                continue
            if pending.record.attempts:
                self.stats.resends += 1
            pending.record.attempts += 1
            pending.due = None
            pending.sent_at = now
            self._schedule(now + timeout)
            frame = self._send_frame(pending.chat_id, pending.client_message_id, pending.text)
            if not await self._write(epoch, frame):
                return False
        return True

    @staticmethod
    def _send_frame(chat_id: str, client_message_id: str, text: str) -> str:
        return text_of(
            frames.SendMessage(chat_id=chat_id, client_message_id=client_message_id, text=text)
        )
