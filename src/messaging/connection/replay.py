"""Sync replay: the answer to a ``sync_request``, in its turn on the connection's sync lane
(docs/protocol.md, "sync_request"; ADR 0008 for the pacing, ADR 0016 for the positions).

Per chat, every message after the requested (or stored) position that the user may see, in
pages, each frame queued once the outbound queue drained below half (paced: a large replay
proceeds at the client's reading speed and leaves room for live pushes), then ``sync_complete``
with the head replayed to. A failure answers with an ``error`` whose ``ref.sync`` names what it
replaces; a request over the sync rate is answered with ``rate_limited`` in its turn, so that
answers stay in request order.
"""

from __future__ import annotations

from collections.abc import Callable

from messaging.connection.answers import domain_error, rate_limited
from messaging.connection.session import Connection, State
from messaging.domain.errors import MessagingError
from messaging.metrics import Metrics
from messaging.protocol import frames
from messaging.protocol.chat import ConversationReader

SyncItem = tuple[frames.SyncRequest, float]
"""A sync request and how long its sender must wait (over the sync rate: answered with an error)."""


class SyncReplay:
    def __init__(
        self,
        *,
        reader: ConversationReader,
        metrics: Metrics,
        page_size: int,
        replayed: Callable[[Connection, str, int], None] = lambda *_: None,
    ) -> None:
        self._reader = reader
        self._metrics = metrics
        self._page_size = page_size
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
        """One chat: its messages after ``after``, page by page, then ``sync_complete``."""
        while True:
            page = await self._reader.messages_after(
                connection.user_id, chat_id, after, self._page_size
            )
            for message in page.messages:
                await self._paced(connection, frames.message(message, replay=True))
                self._replayed(connection, message.chat_id, message.sequence)
            self._metrics.sync_replays.inc(len(page.messages))
            if page.messages:
                after = page.messages[-1].sequence
            if not page.has_more:
                break
        await self._paced(connection, frames.sync_complete(chat_id, page.visible_head))
        connection.saw(chat_id, page.visible_head)

    async def _paced(self, connection: Connection, frame: frames.ServerFrame) -> None:
        if connection.state is not State.LIVE:
            return  # closing: the handler is about to cancel this task
        await connection.put_paced(frames.encode(frame))
        self._metrics.frames_out.labels(frames.kind(frame)).inc()
