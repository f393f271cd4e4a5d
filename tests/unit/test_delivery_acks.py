"""DeliveryAcks (ADR 0025): coalesced write-behind delivery acks, with a manual clock."""

from __future__ import annotations

import asyncio

import pytest

from messaging.domain.errors import InvalidInput, MessagingError, StoreUnavailable, Unavailable
from messaging.durability.acks import DeliveryAcks
from tests.fakes.durability import InMemoryMessageStore

CHAT = "g_00000000000000000000000000000001"
OTHER = "g_00000000000000000000000000000002"


class ManualSleep:
    """``sleep`` that returns only when the test calls :meth:`tick` (the window elapses)."""

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[None]] = []
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        await future

    async def tick(self) -> None:
        """End the current window, then let the flush run."""
        for _ in range(5):
            await asyncio.sleep(0)
        waiting, self.waiting = self.waiting, []
        for future in waiting:
            if not future.done():
                future.set_result(None)
        for _ in range(10):
            await asyncio.sleep(0)


class CountingStore(InMemoryMessageStore):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, str, int]] = []
        self.fail = False

    async def advance_last_acked(self, user_id: str, chat_id: str, sequence: int) -> int:
        self.writes.append((user_id, chat_id, sequence))
        if self.fail:
            raise StoreUnavailable("the store is down")
        return await super().advance_last_acked(user_id, chat_id, sequence)


class Replies:
    def __init__(self) -> None:
        self.got: list[int | MessagingError] = []

    def __call__(self, result: int | MessagingError) -> None:
        self.got.append(result)


async def allow_all(user_id: str, chat_id: str, sequence: int) -> None:
    return None


def make(
    store: CountingStore, check=allow_all, limit: int = 1000
) -> tuple[DeliveryAcks, ManualSleep]:
    sleep = ManualSleep()
    acks = DeliveryAcks(store, check, window_seconds=0.2, pending_limit=limit, sleep=sleep)
    return acks, sleep


async def test_acks_in_one_window_cost_one_write_of_the_highest() -> None:
    store = CountingStore()
    acks, sleep = make(store)
    replies = Replies()
    for sequence in (3, 7, 5, 6):
        acks.submit("u1", CHAT, sequence, delivered=True, reply=replies)
    assert replies.got == []  # nothing answered before the write
    await sleep.tick()
    assert store.writes == [("u1", CHAT, 7)]
    assert replies.got == [7, 7, 7, 7]
    assert sleep.calls == [0.2]
    assert not acks.running  # no task once idle
    assert acks.pending == 0


async def test_each_user_and_chat_is_its_own_write() -> None:
    store = CountingStore()
    acks, sleep = make(store)
    replies = Replies()
    acks.submit("u1", CHAT, 2, delivered=True, reply=replies)
    acks.submit("u1", OTHER, 4, delivered=True, reply=replies)
    acks.submit("u2", CHAT, 9, delivered=True, reply=replies)
    acks.submit("u1", CHAT, 3, delivered=True, reply=replies)
    await sleep.tick()
    assert sorted(store.writes) == sorted([("u1", CHAT, 3), ("u1", OTHER, 4), ("u2", CHAT, 9)])
    assert sorted(replies.got) == [3, 3, 4, 9]  # type: ignore[type-var]


async def test_a_busy_reader_costs_one_write_per_window_whatever_the_rate() -> None:
    store = CountingStore()
    acks, sleep = make(store)
    replies = Replies()
    sequence = 0
    for _ in range(5):  # five windows, 40 acks in each
        for _ in range(40):
            sequence += 1
            acks.submit("u1", CHAT, sequence, delivered=True, reply=replies)
        await sleep.tick()
    assert [w[2] for w in store.writes] == [40, 80, 120, 160, 200]
    assert len(replies.got) == 200


async def test_the_answer_never_goes_backwards() -> None:
    store = CountingStore()
    acks, sleep = make(store)
    replies = Replies()
    acks.submit("u1", CHAT, 10, delivered=True, reply=replies)
    await sleep.tick()
    acks.submit("u1", CHAT, 4, delivered=True, reply=replies)
    await sleep.tick()
    assert replies.got == [10, 10]
    assert store.acked[("u1", CHAT)] == 10


async def test_stop_writes_what_is_pending_at_once() -> None:
    store = CountingStore()
    acks, _ = make(store)
    replies = Replies()
    acks.submit("u1", CHAT, 5, delivered=True, reply=replies)
    await asyncio.sleep(0)
    await acks.close()  # the window has not elapsed
    assert store.writes == [("u1", CHAT, 5)]
    assert replies.got == [5]
    assert not acks.running
    with pytest.raises(Unavailable):
        acks.submit("u1", CHAT, 6, delivered=True, reply=replies)


async def test_a_store_error_answers_every_waiting_ack_with_a_retriable_error() -> None:
    store = CountingStore()
    acks, sleep = make(store)
    replies = Replies()
    store.fail = True
    acks.submit("u1", CHAT, 5, delivered=True, reply=replies)
    acks.submit("u1", CHAT, 6, delivered=True, reply=replies)
    await sleep.tick()
    assert len(replies.got) == 2
    assert all(isinstance(r, Unavailable) and r.retriable for r in replies.got)
    assert acks.pending == 0
    # Nothing is lost: the client acks again and the next window stores it.
    store.fail = False
    acks.submit("u1", CHAT, 6, delivered=True, reply=replies)
    await sleep.tick()
    assert replies.got[-1] == 6
    assert store.acked[("u1", CHAT)] == 6


async def test_unvouched_acks_are_checked_one_by_one_and_a_refused_one_is_not_written() -> None:
    store = CountingStore()

    async def up_to_five(user_id: str, chat_id: str, sequence: int) -> None:
        if sequence > 5:
            raise InvalidInput(f"sequence {sequence} is past the chat head 5")

    acks, sleep = make(store, check=up_to_five)
    replies = Replies()
    acks.submit("u1", CHAT, 4, delivered=False, reply=replies)
    acks.submit("u1", CHAT, 9, delivered=False, reply=replies)
    acks.submit("u1", CHAT, 3, delivered=True, reply=replies)
    await sleep.tick()
    assert store.writes == [("u1", CHAT, 4)]
    assert isinstance(replies.got[0], InvalidInput)  # refused first, in the check
    assert replies.got[1:] == [4, 4]


def test_malformed_acks_are_refused_at_once() -> None:
    acks, _ = make(CountingStore())
    with pytest.raises(InvalidInput):
        acks.submit("u1", CHAT, 0, delivered=True, reply=Replies())
    with pytest.raises(InvalidInput):
        acks.submit("u1", CHAT, -1, delivered=False, reply=Replies())
    with pytest.raises(InvalidInput):
        acks.submit("u1", "nope", 1, delivered=True, reply=Replies())


async def test_too_many_waiting_acks_are_refused_as_retriable() -> None:
    store = CountingStore()
    acks, sleep = make(store, limit=2)
    replies = Replies()
    acks.submit("u1", CHAT, 1, delivered=True, reply=replies)
    acks.submit("u2", CHAT, 1, delivered=True, reply=replies)
    with pytest.raises(Unavailable):
        acks.submit("u3", CHAT, 1, delivered=True, reply=replies)
    await sleep.tick()
    assert replies.got == [1, 1]
    acks.submit("u3", CHAT, 1, delivered=True, reply=replies)
    await acks.close()


async def test_ack_awaits_the_coalesced_answer() -> None:
    store = CountingStore()
    acks, sleep = make(store)
    answers = asyncio.gather(
        acks.ack("u1", CHAT, 2, delivered=True), acks.ack("u1", CHAT, 8, delivered=True)
    )
    await sleep.tick()
    assert await answers == [8, 8]
    assert len(store.writes) == 1
