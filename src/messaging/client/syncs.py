"""Syncs: after every ``ready``, on a gap, on ``resync`` and on request; position-less discovery;
retries of syncs refused with a retriable error (part of
:class:`~messaging.client.connection.ChatClient`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from messaging.client.errors import SyncRejected
from messaging.client.state import (
    DEFAULT_MAX_FRAME_BYTES,
    Chat,
    ClientCore,
    SyncMarker,
    mark_retrieved,
)
from messaging.protocol import frames
from messaging.protocol.frames import MAX_SYNC_CHATS


class Syncs(ClientCore):
    """Syncs: after every ``ready``, on a gap, on ``resync`` and on request."""

    async def sync(self, chat_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Sync ``chat_ids`` (default: every known chat) and wait for their ``sync_complete``.

        Returns the head per chat. With no known chat, runs a position-less sync and returns
        once it went quiet (``discovery_idle``) with what it learned.
        """
        self._raise_if_failed()
        loop = asyncio.get_running_loop()
        ids = (
            list(dict.fromkeys(chat_ids))
            if chat_ids is not None
            else [chat.chat_id for chat in self._chats.values() if not chat.removed]
        )
        if not ids:
            done: asyncio.Future[None] = loop.create_future()
            self._discovery_waiters.append(done)
            self._sync_all = True
            self._schedule(0.0)
            await self._wait(done, self._discovery_waiters)
            return {chat.chat_id: chat.enqueued for chat in self._chats.values()}
        futures: dict[str, asyncio.Future[int]] = {}
        for chat_id in ids:
            chat = self._chat(chat_id)
            chat.removed = False
            futures[chat_id] = loop.create_future()
            futures[chat_id].add_done_callback(mark_retrieved)
            self._orphan_waiters.setdefault(chat_id, []).append(futures[chat_id])
        self._schedule(0.0)
        return {chat_id: await future for chat_id, future in futures.items()}

    async def _on_sync_complete(self, chat_id: str, head: int) -> None:
        self._touch_discovery()
        self._sync_error_streak = 0
        chat = self._chat(chat_id)
        # Explicit syncs are always sent before a position-less one, and no explicit sync of a
        # chat is sent while a position-less one covers it: an unmatched answer is the latter.
        marker = chat.markers.popleft() if chat.markers else None
        if marker is None:
            chat.awaiting_discovery = False
        if chat.chat_id in self._orphan_waiters:
            self._schedule(0.0)
        if marker is not None or chat.fresh:
            before = chat.buffer.delivered
            released = chat.buffer.skip_to(head)
            self.stats.skipped += max(0, chat.buffer.delivered - before - len(released))
            chat.fresh = False
            await self._release(chat, released)
        else:
            self._check_gap(chat)
        if marker is not None:
            for waiter in marker.waiters:
                if not waiter.done():
                    waiter.set_result(head)

    def _on_chat_refused(self, chat_id: str, frame: frames.Error) -> None:
        """``not_a_member`` or ``not_found`` for a chat: it is removed, its syncs fail with
        :class:`SyncRejected`."""
        chat = self._chats.get(chat_id)
        failure = SyncRejected(chat_id, frame.code.value, frame.message)
        waiters = self._orphan_waiters.pop(chat_id, [])
        if chat is not None:
            chat.removed = True
            chat.gap_due = None
            chat.awaiting_discovery = False
            for marker in chat.markers:
                waiters.extend(marker.waiters)
            chat.markers.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(failure)

    def _retry_sync(self, ref: frames.ErrorRef, due: float) -> None:
        """A sync answered with a retriable error (``ref.sync``) instead of ``sync_complete``:
        its marker is released (answers come in request order, so it is the chat's oldest) and
        the sync is asked again at ``due``, keeping its waiters."""
        chat_ids: tuple[str, ...]
        if ref.chat_id is not None:
            chat_ids = (ref.chat_id,)
        elif ref.chat_ids is not None:
            chat_ids = ref.chat_ids
        else:  # a position-less sync failed before it named any chat
            self._sync_all_due = due
            self._schedule(due)
            return
        for chat_id in chat_ids:
            chat = self._chats.get(chat_id)
            if chat is None:
                continue
            waiters: list[asyncio.Future[int]] = []
            if chat.awaiting_discovery:  # the position-less sync failed on this chat
                chat.awaiting_discovery = False
            elif chat.markers:
                waiters = chat.markers.popleft().waiters
            else:
                continue
            _, earlier = self._sync_retries.get(chat.chat_id, (due, []))
            self._sync_retries[chat.chat_id] = (due, [*earlier, *waiters])
            self._schedule(due)

    def _due_sync_retries(self, now: float) -> None:
        """Syncs refused with a retriable error come back as requests once their delay ends."""
        if self._sync_all_due is not None:
            if now >= self._sync_all_due:
                self._sync_all_due = None
                self._sync_all = True
            else:
                self._schedule(self._sync_all_due)
        for chat_id, (due, waiters) in list(self._sync_retries.items()):
            if due <= now:
                del self._sync_retries[chat_id]
                self._orphan_waiters.setdefault(chat_id, []).extend(waiters)
            else:
                self._schedule(due)

    def _end_discovery(self) -> None:
        self._discovery_until = None
        for waiter in self._discovery_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._discovery_waiters.clear()
        for chat in self._chats.values():
            chat.awaiting_discovery = False
            self._check_gap(chat)
        self._schedule(0.0)

    async def _sync_everything(self, epoch: int) -> bool:
        discover = (
            not self._chats or self.options.discover_on_reconnect or bool(self._discovery_waiters)
        )
        # A chat only known from an unfinished position-less sync waits for the next one (an
        # explicit sync from 0 would replay its whole history). A chat that a running
        # position-less sync still covers gets no explicit sync before that one answered for it,
        # or the answers could not be told apart (``_on_sync_complete``); ``_gap_syncs`` sends
        # the ones asked for by ``sync()`` later.
        discovering = self._discovery_active()
        explicit = [
            chat
            for chat in self._chats.values()
            if not (discovering and chat.awaiting_discovery)
            and (
                chat.chat_id in self._orphan_waiters
                or (not chat.removed and not (discover and chat.fresh and chat.enqueued == 0))
            )
        ]
        if not await self._sync_chats(explicit, epoch):
            return False
        if discover:
            for chat in self._chats.values():
                chat.awaiting_discovery = not chat.removed
            self._discovery_until = time.monotonic() + self.options.discovery_idle
            self._schedule(self._discovery_until)
            self.stats.sync_requests += 1
            return await self._write(epoch, frames.SyncRequest())
        return True

    async def _sync_chats(self, chats: list[Chat], epoch: int) -> bool:
        """Explicit sync_request frames for ``chats``, each frame within max_frame_bytes."""
        max_frame = self.limits.get("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES)
        budget = max_frame - 64
        entries: list[frames.SyncPosition] = []
        size = 0
        for chat in chats:
            marker = SyncMarker(time.monotonic(), self._orphan_waiters.pop(chat.chat_id, []))
            chat.markers.append(marker)
            chat.gap_due = None
            entry = frames.SyncPosition(
                chat_id=chat.chat_id, last_acked_sequence=chat.buffer.delivered
            )
            entry_size = len(frames.encode(entry))
            if entries and (size + entry_size + 1 > budget or len(entries) >= MAX_SYNC_CHATS):
                if not await self._write_sync(entries, epoch):
                    return False
                entries, size = [], 0
            entries.append(entry)
            size += entry_size + 1
        if entries:
            return await self._write_sync(entries, epoch)
        return True

    async def _write_sync(self, entries: list[frames.SyncPosition], epoch: int) -> bool:
        self.stats.sync_requests += 1
        return await self._write(epoch, frames.SyncRequest(chats=tuple(entries)))

    async def _gap_syncs(self, now: float, epoch: int) -> bool:
        """Sync the chats whose gap outlived ``gap_delay``, and those ``sync()`` asked for."""
        discovering = self._discovery_active()
        due: list[Chat] = []
        gaps = 0
        for chat in self._chats.values():
            requested = chat.chat_id in self._orphan_waiters
            if chat.gap_due is not None and chat.gap_due > now:
                self._schedule(chat.gap_due)
                if not requested:
                    continue
            gap_ready = chat.gap_due is not None and chat.gap_due <= now
            if not (requested or gap_ready):
                continue
            if discovering and chat.awaiting_discovery:
                continue  # its completion or the end of the discovery re-checks it
            if gap_ready:
                chat.gap_due = None
            if requested:
                due.append(chat)
                gaps += chat.buffer.has_gap
            elif (
                not chat.removed
                and chat.buffer.has_gap
                and not any(
                    now - marker.sent_at < self.options.sync_timeout for marker in chat.markers
                )
            ):
                due.append(chat)
                gaps += 1
        if not due:
            return True
        self.stats.gap_syncs += gaps
        return await self._sync_chats(due, epoch)
