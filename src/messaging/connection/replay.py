"""Sync replay: the answer to a ``sync_request``, in its turn on the connection's sync lane
(docs/protocol.md, "sync_request"; ADR 0008 for the pacing, ADR 0016 for the positions).

Per chat, every message after the requested (or stored) position that the user may see, in
pages, each frame queued once the outbound queue drained below half (paced: a large replay
proceeds at the client's reading speed and leaves room for live pushes), then ``sync_complete``
with the head replayed to. The next page is read while the current one is written (one read in
flight at most, two pages in memory at most), and a page holds at most ``page_size`` messages
and about ``page_bytes`` bytes of frames, sized from the previous page's frames (ADR 0035).

A failure answers with an ``error`` whose ``ref.sync`` names what it replaces; a request over the
sync rate is answered with ``rate_limited`` in its turn, so that answers stay in request order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from messaging.connection.answers import domain_error, rate_limited
from messaging.connection.session import Connection, State
from messaging.domain.errors import MessagingError
from messaging.domain.model import HistoryPage
from messaging.metrics import Metrics
from messaging.protocol import frames
from messaging.protocol.chat import ConversationReader

SyncItem = tuple[frames.SyncRequest, float]
"""A sync request and how long its sender must wait (over the sync rate: answered with an error)."""


DEFAULT_PAGE_BYTES = 256 * 1024
FIRST_FRAME_BYTES = 1024
"""What the first page's frames are assumed to weigh (nothing is known of the chat yet)."""


def next_page_limit(frames_bytes: Sequence[int], page_size: int, page_bytes: int) -> int:
    """Messages to read for the next page: as many as fit ``page_bytes`` at the mean size of
    the last page's frames, from 1 to ``page_size``."""
    mean = sum(frames_bytes) / len(frames_bytes) if frames_bytes else FIRST_FRAME_BYTES
    return max(1, min(page_size, int(page_bytes // max(1.0, mean))))


class SyncReplay:
    def __init__(
        self,
        *,
        reader: ConversationReader,
        metrics: Metrics,
        page_size: int,
        page_bytes: int = DEFAULT_PAGE_BYTES,
        replayed: Callable[[Connection, str, int], None] = lambda *_: None,
    ) -> None:
        if page_size < 1 or page_bytes < 1:
            raise ValueError("page_size and page_bytes must be >= 1")
        self._reader = reader
        self._metrics = metrics
        self._page_size = page_size
        self._page_bytes = page_bytes
        self._replayed = replayed
        """Told each message replayed to a connection (so that live delivery does not queue
        it again: ``LocalConnections.replayed``, ADR 0033)."""

    async def answer(self, connection: Connection, item: SyncItem) -> None:
        """One sync request, in its turn on the connection's sync lane."""
        request, wait = item
        if wait > 0:
            ref = frames.sync_ref(request)
            rate_limited(connection, self._metrics, "syncs", "sync requests", ref, wait)
            return
        self._metrics.sync_requests.inc()
        try:
            if request.chats is None:
                summaries = await self._reader.list_chats(connection.user_id)
                positions = [(s.chat.chat_id, s.last_acked_sequence) for s in summaries]
            else:
                positions = [(p.chat_id, p.last_acked_sequence) for p in request.chats]
        except MessagingError as exc:
            connection.push_frame(domain_error(exc, frames.sync_ref(request)))
            return
        for chat_id, after in positions:
            try:
                await self._replay(connection, chat_id, after)
            except MessagingError as exc:
                connection.push_frame(domain_error(exc, frames.sync_chat_ref(chat_id)))

    async def _replay(self, connection: Connection, chat_id: str, after: int) -> None:
        """One chat: its messages after ``after``, page by page (the next one read while this
        one is written), then ``sync_complete``."""
        user_id = connection.user_id
        limit = next_page_limit((), self._page_size, self._page_bytes)
        read: asyncio.Future[HistoryPage] = asyncio.ensure_future(
            self._reader.messages_after(user_id, chat_id, after, limit)
        )
        try:
            while True:
                page = await read
                encoded = [frames.encode(frames.message(m, replay=True)) for m in page.messages]
                if page.has_more:
                    limit = next_page_limit(
                        [len(f) for f in encoded], self._page_size, self._page_bytes
                    )
                    read = asyncio.ensure_future(
                        self._reader.messages_after(
                            user_id, chat_id, page.messages[-1].sequence, limit
                        )
                    )
                for message, frame in zip(page.messages, encoded, strict=True):
                    await self._paced_bytes(connection, frame, "message")
                    self._replayed(connection, message.chat_id, message.sequence)
                self._metrics.sync_replays.inc(len(page.messages))
                if not page.has_more:
                    break
        finally:
            # Leaving early (an error, or the connection closing): the read ahead is cancelled
            # and awaited, its outcome retrieved (no task outlives the replay).
            read.cancel()
            await asyncio.wait([read])
            if not read.cancelled():
                read.exception()
        await self._paced(connection, frames.sync_complete(chat_id, page.visible_head))
        connection.saw(chat_id, page.visible_head)

    async def _paced(self, connection: Connection, frame: frames.ServerFrame) -> None:
        await self._paced_bytes(connection, frames.encode(frame), frames.kind(frame))

    async def _paced_bytes(self, connection: Connection, frame: bytes, kind: str) -> None:
        if connection.state is not State.LIVE:
            return  # closing: the handler is about to cancel this task
        await connection.put_paced(frame)
        self._metrics.frames_out.labels(kind).inc()
