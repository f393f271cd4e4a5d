"""The sync replay (ADR 0035): the next page is read while the current one is written (one read
in flight at most), pages are sized by bytes, every message goes out once and in order, and a
replay that ends early leaves no read behind."""

from __future__ import annotations

import asyncio
from typing import cast

import msgspec
import pytest

from messaging.connection.replay import SyncReplay, next_page_limit
from messaging.connection.session import Connection, State
from messaging.domain.errors import Unavailable
from messaging.domain.model import ChatSummary, HistoryPage, Message
from messaging.metrics import Metrics
from messaging.protocol import frames

CHAT = "g_" + "c" * 32


def message(sequence: int, text: str) -> Message:
    return Message(
        chat_id=CHAT,
        sequence=sequence,
        sender_id="u_" + "a" * 32,
        sender_device="d",
        client_message_id=f"m{sequence}",
        text=text,
        created_at_ms=0,
    )


class Store:
    """A chat of ``head`` messages; each read yields a few times and counts how many reads are
    in flight together; ``fail_after`` makes the reads after that many fail."""

    def __init__(
        self, head: int, text: str = "hi", fail_after: int | None = None, yields: int = 5
    ) -> None:
        self.head = head
        self.yields = yields
        self.text = text
        self.fail_after = fail_after
        self.in_flight = 0
        self.most_in_flight = 0
        self.limits: list[int] = []
        self.cancelled = 0

    async def messages_after(
        self, user_id: str, chat_id: str, after: int, limit: int
    ) -> HistoryPage:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.limits.append(limit)
        try:
            for _ in range(self.yields):
                await asyncio.sleep(0)
            if self.fail_after is not None and len(self.limits) > self.fail_after:
                raise Unavailable("the store is away")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        last = min(self.head, after + limit)
        return HistoryPage(
            chat_id=chat_id,
            messages=[message(s, self.text) for s in range(after + 1, last + 1)],
            visible_head=self.head,
            has_more=last < self.head,
        )

    async def ack(self, user_id: str, chat_id: str, sequence: int) -> int:
        raise AssertionError("not used")

    async def ack_delivered(self, user_id: str, chat_id: str, sequence: int) -> int:
        raise AssertionError("not used")

    async def list_chats(self, user_id: str) -> list[ChatSummary]:
        raise AssertionError("not used")


class Socket:
    """Just what the replay uses of a connection: the frames it queued, and for each replayed
    frame how many reads were in flight while it was written."""

    def __init__(self, store: Store, block_after: int | None = None) -> None:
        self.user_id = "u_" + "b" * 32
        self.state = State.LIVE
        self.store = store
        self.queued: list[dict[str, object]] = []
        self.reads_while_writing: list[int] = []
        self.block_after = block_after
        self.blocked = asyncio.Event()
        self.seen: dict[str, int] = {}

    async def put_paced(self, frame: bytes) -> None:
        if self.block_after is not None and len(self.queued) >= self.block_after:
            self.blocked.set()
            await asyncio.Event().wait()  # a client that stopped reading
        self.reads_while_writing.append(self.store.in_flight)
        self.queued.append(msgspec.json.decode(frame))
        await asyncio.sleep(0)

    def push_frame(self, frame: frames.ServerFrame) -> bool:
        self.queued.append(msgspec.json.decode(frames.encode(frame)))
        return True

    def saw(self, chat_id: str, sequence: int) -> None:
        self.seen[chat_id] = sequence


def sync_item() -> tuple[frames.SyncRequest, float]:
    position = frames.SyncPosition(chat_id=CHAT, last_acked_sequence=0)
    return frames.SyncRequest(chats=(position,)), 0.0


def replay(store: Store, *, page_size: int = 100, page_bytes: int = 1 << 20) -> SyncReplay:
    return SyncReplay(reader=store, metrics=Metrics(), page_size=page_size, page_bytes=page_bytes)


async def test_the_next_page_is_read_while_this_one_is_written_one_read_at_a_time() -> None:
    store = Store(1000)
    socket = Socket(store)
    await replay(store).answer(cast(Connection, socket), sync_item())
    sequences = [f["sequence"] for f in socket.queued if f["type"] == "message"]
    assert sequences == list(range(1, 1001))  # every message once, in order
    assert socket.queued[-1] == {"type": "sync_complete", "chat_id": CHAT, "head": 1000}
    assert socket.seen == {CHAT: 1000}
    assert store.limits == [100] * 10
    assert store.most_in_flight == 1  # never two reads of one chat at once
    # The reads of pages 2..10 overlapped the writing of pages 1..9.
    assert sum(1 for n in socket.reads_while_writing[:900] if n) >= 9
    assert not any(socket.reads_while_writing[900:])  # nothing read past the end


async def test_pages_are_sized_by_bytes() -> None:
    store = Store(60, text="x" * 2000)
    socket = Socket(store)
    await replay(store, page_size=200, page_bytes=20_000).answer(
        cast(Connection, socket), sync_item()
    )
    assert [f["sequence"] for f in socket.queued if f["type"] == "message"] == list(range(1, 61))
    frame_bytes = len(frames.encode(frames.message(message(1, "x" * 2000), replay=True)))
    assert store.limits[0] == 20_000 // 1024  # nothing known yet: 1 KiB a frame assumed
    assert all(limit == 20_000 // frame_bytes for limit in store.limits[1:])
    assert all(limit * frame_bytes <= 20_000 for limit in store.limits[1:])


def test_the_page_limit_stays_within_one_and_the_page_size() -> None:
    assert next_page_limit([], 200, 256 * 1024) == 200
    assert next_page_limit([300] * 5, 200, 256 * 1024) == 200
    assert next_page_limit([10_000], 200, 20_000) == 2
    assert next_page_limit([100_000], 200, 20_000) == 1


async def test_a_failing_read_ahead_answers_an_error_after_the_pages_before_it() -> None:
    store = Store(300, fail_after=1)
    socket = Socket(store)
    await replay(store).answer(cast(Connection, socket), sync_item())
    assert [f["sequence"] for f in socket.queued if f["type"] == "message"] == list(range(1, 101))
    last = socket.queued[-1]
    assert last["type"] == "error"
    assert last["code"] == "unavailable"
    assert socket.seen == {}  # no sync_complete: nothing past the pages sent counts as seen


async def test_a_replay_ended_early_cancels_its_read_ahead() -> None:
    store = Store(1000, yields=1000)
    socket = Socket(store, block_after=10)
    task = asyncio.create_task(replay(store).answer(cast(Connection, socket), sync_item()))
    await socket.blocked.wait()
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(store.limits) == 2
    assert store.cancelled == 1  # the read of page 2 was in flight: cancelled and awaited
    assert store.in_flight == 0


def test_bad_page_arguments() -> None:
    with pytest.raises(ValueError, match="page_size"):
        replay(Store(1), page_size=0)
