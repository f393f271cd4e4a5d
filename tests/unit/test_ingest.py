"""IngestService with the in-memory store: sequences, idempotency, text rules, membership."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import attrs
import pytest

from messaging.domain.errors import (
    IdempotencyKeyReused,
    InvalidInput,
    NotAMember,
    NotFound,
    Unavailable,
)
from messaging.domain.ids import new_group_id, new_user_id
from messaging.domain.model import Chat, ChatKind, IdempotencyRecord, Membership, Message
from messaging.durability.config import DurabilityConfig
from messaging.durability.ingest import IngestService
from messaging.durability.ports import Append, BatchOutcome
from tests.fakes.durability import InMemoryMessageStore

CONFIG = DurabilityConfig(max_text_bytes=64, append_deadline_seconds=1.0)


async def new_chat(store: InMemoryMessageStore, *members: str) -> str:
    chat = Chat(
        chat_id=new_group_id(),
        kind=ChatKind.GROUP,
        title="t",
        created_by=members[0],
        created_at_ms=0,
    )
    await store.create_chat(
        chat, [Membership(chat_id=chat.chat_id, user_id=m, joined_seq=0) for m in members]
    )
    return chat.chat_id


async def setup(*members: str) -> tuple[InMemoryMessageStore, IngestService, str]:
    store = InMemoryMessageStore()
    chat_id = await new_chat(store, *members)
    return store, IngestService(store, CONFIG, clock=lambda: 1000.0), chat_id


async def send(service: IngestService, sender: str, chat_id: str, cmid: str, text: str = "hi"):
    return await service.send(
        sender_id=sender, sender_device="d1", chat_id=chat_id, client_message_id=cmid, text=text
    )


async def test_sequences_start_at_one_and_have_no_gaps() -> None:
    alice = new_user_id()
    store, service, chat_id = await setup(alice)
    results = [await send(service, alice, chat_id, f"m{i}") for i in range(5)]
    assert [r.message.sequence for r in results] == [1, 2, 3, 4, 5]
    assert not any(r.duplicate for r in results)
    assert sorted(s for (_, s) in store.messages) == [1, 2, 3, 4, 5]


async def test_a_retry_returns_the_original_sequence_and_stores_nothing() -> None:
    alice = new_user_id()
    store, service, chat_id = await setup(alice)
    first = await send(service, alice, chat_id, "once", "hello")
    await send(service, alice, chat_id, "other")
    retry = await send(service, alice, chat_id, "once", "hello")
    assert retry.duplicate
    assert retry.message == first.message
    assert len(store.messages) == 2


@pytest.mark.parametrize(("same_chat", "text"), [(True, "different"), (False, "hello")])
async def test_reusing_a_key_for_other_content_is_refused(same_chat: bool, text: str) -> None:
    alice = new_user_id()
    store, service, chat_id = await setup(alice)
    await send(service, alice, chat_id, "k", "hello")
    target = chat_id if same_chat else await new_chat(store, alice)
    with pytest.raises(IdempotencyKeyReused, match="already used for a different message"):
        await send(service, alice, target, "k", text)
    assert len(store.messages) == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "must not be empty"),
        ("bad \ud800 surrogate", "not valid UTF-8"),
        ("x" * 65, "the limit is 64"),
        ("é" * 33, "66 bytes"),
    ],
)
async def test_bad_text_is_refused_and_nothing_is_stored(text: str, reason: str) -> None:
    alice = new_user_id()
    store, service, chat_id = await setup(alice)
    with pytest.raises(InvalidInput, match=reason):
        await send(service, alice, chat_id, "k", text)
    assert store.messages == {}
    assert store.idempotency == {}


async def test_text_at_the_limit_is_accepted_byte_for_byte() -> None:
    alice = new_user_id()
    store, service, chat_id = await setup(alice)
    text = "👩‍👩‍👧‍👦" * 2 + "a" * (64 - 50)
    assert len(text.encode()) == 64
    result = await send(service, alice, chat_id, "k", text)
    assert store.messages[(chat_id, result.message.sequence)].text.encode() == text.encode()


async def test_non_members_and_unknown_chats_are_refused() -> None:
    alice, mallory = new_user_id(), new_user_id()
    store, service, chat_id = await setup(alice)
    with pytest.raises(NotFound, match="does not exist or you are not in it"):
        await send(service, mallory, chat_id, "k")  # the same answer as for no such chat
    with pytest.raises(NotFound, match="does not exist or you are not in it"):
        await send(service, alice, new_group_id(), "k")
    bob = new_user_id()
    await store.put_membership(Membership(chat_id=chat_id, user_id=bob, joined_seq=0))
    await store.remove_membership(chat_id, bob, 0)
    with pytest.raises(NotAMember, match="no longer a member"):
        await send(service, bob, chat_id, "k")  # a removed member knows the chat exists
    with pytest.raises(InvalidInput, match="client_message_id"):
        await send(service, alice, chat_id, "has space")
    assert store.messages == {}


async def test_fifty_concurrent_senders_get_exactly_one_to_fifty() -> None:
    users = [new_user_id() for _ in range(50)]
    _, service, chat_id = await setup(*users)
    results = await asyncio.gather(*(send(service, u, chat_id, "c") for u in users))
    assert sorted(r.message.sequence for r in results) == list(range(1, 51))
    retries = await asyncio.gather(*(send(service, u, chat_id, "c") for u in users))
    assert [r.message.sequence for r in retries] == [r.message.sequence for r in results]
    assert all(r.duplicate for r in retries)


class RacingStore(InMemoryMessageStore):
    """Another process appends just before each of our first ``races`` attempts (heedless of
    head claims: it stands for every way of losing the race)."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.attempts = 0

    async def append_batch(
        self,
        chat_id: str,
        expected_head: int,
        appends: Sequence[Append],
        *,
        writer: str = "",
        now_ms: int = 0,
    ) -> BatchOutcome:
        self.attempts += 1
        if self.races > 0:
            self.races -= 1
            self.claims.pop(chat_id, None)
            chat = self.chats[chat_id]
            first = appends[0]
            intruder = attrs.evolve(
                first.message, sequence=chat.head + 1, client_message_id=f"other{self.races}"
            )
            record = attrs.evolve(
                first.record, client_message_id=intruder.client_message_id, sequence=chat.head + 1
            )
            await super().append_batch(chat_id, chat.head, [Append(intruder, record)])
        return await super().append_batch(
            chat_id, expected_head, appends, writer=writer, now_ms=now_ms
        )


async def test_losing_a_race_re_reads_the_head_and_takes_the_next_sequence() -> None:
    alice = new_user_id()
    store = RacingStore(races=3)
    chat_id = await new_chat(store, alice)
    service = IngestService(store, CONFIG, clock=lambda: 1000.0)
    result = await send(service, alice, chat_id, "mine")
    assert result.message.sequence == 4
    assert store.attempts == 4
    assert sorted(s for (_, s) in store.messages) == [1, 2, 3, 4]


async def test_endless_contention_ends_in_a_retriable_error() -> None:
    alice = new_user_id()
    store = RacingStore(races=10**9)
    chat_id = await new_chat(store, alice)
    ticks = iter(range(10**6))
    service = IngestService(
        store,
        attrs.evolve(CONFIG, append_deadline_seconds=5),
        clock=lambda: 1000.0,
        monotonic=lambda: float(next(ticks)),
    )
    with pytest.raises(Unavailable) as info:
        await send(service, alice, chat_id, "mine")
    assert info.value.retriable
    assert not any(m.client_message_id == "mine" for m in store.messages.values())


class Sink:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def submit(self, message: Message) -> None:
        self.messages.append(message)


class LostAnswerStore(InMemoryMessageStore):
    """The first append commits, but its answer is lost: the store's retrier re-sends it and
    finds its own idempotency records (``DUPLICATE_KEY``)."""

    async def append_batch(
        self,
        chat_id: str,
        expected_head: int,
        appends: Sequence[Append],
        *,
        writer: str = "",
        now_ms: int = 0,
    ) -> BatchOutcome:
        outcome = await super().append_batch(
            chat_id, expected_head, appends, writer=writer, now_ms=now_ms
        )
        if outcome.appended:
            return await super().append_batch(
                chat_id, expected_head, appends, writer=writer, now_ms=now_ms
            )
        return outcome


async def test_a_send_whose_commit_answer_was_lost_still_reaches_the_relay() -> None:
    alice = new_user_id()
    store = LostAnswerStore()
    chat_id = await new_chat(store, alice)
    sink = Sink()
    service = IngestService(store, CONFIG, sink=sink, clock=lambda: 1000.0)
    result = await send(service, alice, chat_id, "m1")
    assert (result.message.sequence, result.duplicate) == (1, True)
    assert [m.sequence for m in sink.messages] == [1]


async def test_a_retry_found_by_the_first_read_is_not_handed_to_the_relay_again() -> None:
    alice = new_user_id()
    store, _, chat_id = await setup(alice)
    sink = Sink()
    service = IngestService(store, CONFIG, sink=sink, clock=lambda: 1000.0)
    await send(service, alice, chat_id, "m1")
    await send(service, alice, chat_id, "m1")
    assert [m.sequence for m in sink.messages] == [1]


class CountingStore(InMemoryMessageStore):
    """Counts the send path's store calls; appends wait for ``gate`` while it is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.appending = asyncio.Event()

    async def get_idempotency(self, key: str) -> IdempotencyRecord | None:
        self.calls.append("get_idempotency")
        return await super().get_idempotency(key)

    async def append_batch(
        self,
        chat_id: str,
        expected_head: int,
        appends: Sequence[Append],
        *,
        writer: str = "",
        now_ms: int = 0,
    ) -> BatchOutcome:
        self.calls.append("append_batch")
        self.appending.set()
        await self.gate.wait()
        return await super().append_batch(
            chat_id, expected_head, appends, writer=writer, now_ms=now_ms
        )


async def test_sends_to_a_chat_with_a_transaction_in_flight_make_no_read_first() -> None:
    """A hot chat (ADR 0024, amended 2026-12-02): a send that finds the chat's committer busy
    joins the queue without the idempotency read; the transaction's key condition decides."""
    alice = new_user_id()
    store = CountingStore()
    chat_id = await new_chat(store, alice)
    service = IngestService(store, CONFIG, clock=lambda: 1000.0)
    await send(service, alice, chat_id, "m1")
    store.calls.clear()
    store.gate.clear()
    store.appending.clear()
    first = asyncio.create_task(send(service, alice, chat_id, "m2"))
    await store.appending.wait()
    rest = [asyncio.create_task(send(service, alice, chat_id, f"m{i}")) for i in range(3, 9)]
    await asyncio.sleep(0.01)
    store.gate.set()
    results = await asyncio.gather(first, *rest)
    assert [r.message.sequence for r in results] == [2, 3, 4, 5, 6, 7, 8]
    # The lone send read its key; the six behind its transaction did not, and went together.
    assert store.calls == ["get_idempotency", "append_batch", "append_batch"]


async def test_a_retry_into_a_busy_chat_gets_the_original_and_is_not_relayed_again() -> None:
    alice = new_user_id()
    store = CountingStore()
    chat_id = await new_chat(store, alice)
    sink = Sink()
    service = IngestService(store, CONFIG, sink=sink, clock=lambda: 1000.0)
    original = await send(service, alice, chat_id, "m1")
    store.gate.clear()
    store.appending.clear()
    other = asyncio.create_task(send(service, alice, chat_id, "m2"))
    await store.appending.wait()
    retry = asyncio.create_task(send(service, alice, chat_id, "m1"))
    fresh = asyncio.create_task(send(service, alice, chat_id, "m3"))
    await asyncio.sleep(0.01)
    store.gate.set()
    again, _, new = await asyncio.gather(retry, other, fresh)
    assert (again.message.sequence, again.duplicate) == (original.message.sequence, True)
    assert (new.message.sequence, new.duplicate) == (3, False)
    # The retry was found by the transaction (it made no read first), set aside, and answered
    # from the stored record; only the messages written by these sends went to the relay.
    assert store.calls.count("get_idempotency") == 3  # m1's and m2's reads, the retry's answer
    assert sorted(m.sequence for m in sink.messages) == [1, 2, 3]
    assert sorted(s for (_, s) in store.messages) == [1, 2, 3]


async def test_an_expired_idempotency_record_not_yet_deleted_counts_as_absent() -> None:
    alice = new_user_id()
    store, _, chat_id = await setup(alice)
    day = 24 * 3600
    old = IngestService(store, CONFIG, clock=lambda: 1000.0)
    first = await send(old, alice, chat_id, "reused", "old text")
    later = IngestService(
        store, CONFIG, clock=lambda: 1000.0 + CONFIG.idempotency_ttl_seconds + day
    )
    again = await send(later, alice, chat_id, "reused", "new text")
    assert (first.message.sequence, again.message.sequence, again.duplicate) == (1, 2, False)
    assert store.messages[(chat_id, 2)].text == "new text"


class GatedStore(InMemoryMessageStore):
    """The first append waits for ``gate``: sends arriving meanwhile queue behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def append_batch(
        self,
        chat_id: str,
        expected_head: int,
        appends: Sequence[Append],
        *,
        writer: str = "",
        now_ms: int = 0,
    ) -> BatchOutcome:
        await self.gate.wait()
        return await super().append_batch(
            chat_id, expected_head, appends, writer=writer, now_ms=now_ms
        )


async def gated(*members: str, config: DurabilityConfig = CONFIG):
    store = GatedStore()
    chat_id = await new_chat(store, *members)
    return store, IngestService(store, config, clock=lambda: 1000.0), chat_id


async def burst(
    service: IngestService, store: GatedStore, sends: list[tuple[str, str, str]], chat_id: str
):
    """The first send takes the committer, the rest queue behind it; then the gate opens."""
    tasks = []
    for u, c, t in sends:
        tasks.append(asyncio.create_task(send(service, u, chat_id, c, t)))
        if len(tasks) == 1:
            for _ in range(10):
                await asyncio.sleep(0)
    for _ in range(10):
        await asyncio.sleep(0)
    store.gate.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_sends_queued_behind_a_transaction_go_in_the_next_one_together() -> None:
    users = [new_user_id() for _ in range(10)]
    store, service, chat_id = await gated(*users)
    results = await burst(service, store, [(u, "c", "hi") for u in users], chat_id)
    assert sorted(r.message.sequence for r in results) == list(range(1, 11))  # type: ignore[union-attr]
    assert store.batches == [1, 9]
    assert sorted(s for (_, s) in store.messages) == list(range(1, 11))
    assert service.committers == 0  # no task while idle


async def test_a_duplicate_inside_a_batch_answers_with_the_original_sequence() -> None:
    alice, bob = new_user_id(), new_user_id()
    store, service, chat_id = await gated(alice, bob)
    results = await burst(
        service,
        store,
        [(bob, "first", "x"), (alice, "k", "hi"), (bob, "b", "yo"), (alice, "k", "hi")],
        chat_id,
    )
    _, original, _, copy = results
    assert not isinstance(original, BaseException)
    assert not isinstance(copy, BaseException)
    assert (original.message.sequence, original.duplicate) == (2, False)
    assert (copy.message.sequence, copy.duplicate) == (2, True)
    assert store.batches == [1, 2]  # the copy was not written
    assert len(store.messages) == 3


async def test_a_key_reused_inside_a_batch_for_other_content_is_refused() -> None:
    alice = new_user_id()
    store, service, chat_id = await gated(alice)
    results = await burst(
        service, store, [(alice, "first", "x"), (alice, "k", "hi"), (alice, "k", "other")], chat_id
    )
    assert isinstance(results[2], IdempotencyKeyReused)
    assert [m.text for _, m in sorted(store.messages.items())] == ["x", "hi"]


async def test_a_non_member_in_a_batch_fails_alone_and_the_others_are_stored() -> None:
    alice, bob, mallory = new_user_id(), new_user_id(), new_user_id()
    store, service, chat_id = await gated(alice, bob)
    results = await burst(
        service,
        store,
        [
            (alice, "a0", "x"),
            (alice, "a1", "x"),
            (mallory, "m1", "x"),
            (bob, "b1", "x"),
            (mallory, "m2", "x"),
        ],
        chat_id,
    )
    assert isinstance(results[2], NotFound)
    assert isinstance(results[4], NotFound)
    assert [r.message.sequence for r in (results[0], results[1], results[3])] == [1, 2, 3]  # type: ignore[union-attr]
    assert store.chats[chat_id].head == 3
    assert {m.sender_id for m in store.messages.values()} == {alice, bob}


async def test_batches_are_capped_by_message_count() -> None:
    users = [new_user_id() for _ in range(12)]
    config = attrs.evolve(CONFIG, commit_max_messages=5)
    store, service, chat_id = await gated(*users, config=config)
    results = await burst(service, store, [(u, "c", "hi") for u in users], chat_id)
    assert sorted(r.message.sequence for r in results) == list(range(1, 13))  # type: ignore[union-attr]
    assert store.batches == [1, 5, 5, 1]


async def test_batches_are_capped_by_transaction_items() -> None:
    # 40 distinct senders: 1 + 3n + n <= 100 items -> at most 24 messages a transaction.
    users = [new_user_id() for _ in range(41)]
    config = attrs.evolve(CONFIG, commit_max_messages=100)
    store, service, chat_id = await gated(*users, config=config)
    await burst(service, store, [(u, "c", "hi") for u in users], chat_id)
    assert store.batches == [1, 24, 16]


async def test_a_full_chat_queue_refuses_a_send_as_retriable() -> None:
    users = [new_user_id() for _ in range(4)]
    store, service, chat_id = await gated(*users, config=attrs.evolve(CONFIG, commit_queue_limit=2))
    results = await burst(service, store, [(u, "c", "hi") for u in users], chat_id)
    refused = [r for r in results if isinstance(r, Unavailable)]
    assert len(refused) == 1
    assert refused[0].retriable
    assert store.chats[chat_id].head == 3


async def test_close_answers_queued_sends_and_lets_the_transaction_in_flight_finish() -> None:
    alice = new_user_id()
    store, service, chat_id = await gated(alice)
    tasks = [asyncio.create_task(send(service, alice, chat_id, "c0"))]
    for _ in range(10):
        await asyncio.sleep(0)
    tasks += [asyncio.create_task(send(service, alice, chat_id, f"c{i}")) for i in (1, 2)]
    for _ in range(10):
        await asyncio.sleep(0)
    closing = asyncio.create_task(service.close())
    await asyncio.sleep(0)
    store.gate.set()
    await closing
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0].message.sequence == 1  # type: ignore[union-attr]
    assert all(isinstance(r, Unavailable) for r in results[1:])
    assert service.committers == 0
    with pytest.raises(Unavailable):
        await send(service, alice, chat_id, "late")
