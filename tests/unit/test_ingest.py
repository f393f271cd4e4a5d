"""IngestService with the in-memory store: sequences, idempotency, text rules, membership."""

from __future__ import annotations

import asyncio

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
from messaging.durability.ports import AppendOutcome
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
    """Another process appends just before each of our first ``races`` attempts."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.attempts = 0

    async def try_append(
        self, message: Message, expected_head: int, record: IdempotencyRecord
    ) -> AppendOutcome:
        self.attempts += 1
        if self.races > 0:
            self.races -= 1
            chat = self.chats[message.chat_id]
            intruder = attrs.evolve(
                message, sequence=chat.head + 1, client_message_id=f"other{self.races}"
            )
            await super().try_append(
                intruder,
                chat.head,
                attrs.evolve(
                    record, client_message_id=intruder.client_message_id, sequence=chat.head + 1
                ),
            )
        return await super().try_append(message, expected_head, record)


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
    finds its own idempotency record (``DUPLICATE_KEY``)."""

    async def try_append(
        self, message: Message, expected_head: int, record: IdempotencyRecord
    ) -> AppendOutcome:
        outcome = await super().try_append(message, expected_head, record)
        if outcome is AppendOutcome.APPENDED:
            return await super().try_append(message, expected_head, record)
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
