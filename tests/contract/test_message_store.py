"""The ``MessageStore`` contract, run against the in-memory fake and every DynamoDB emulator.

The durability invariants rest on these behaviours, above all on ``try_append`` being atomic
and conditional on the head.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from messaging.domain.ids import direct_chat_id, new_group_id, new_user_id
from messaging.domain.model import (
    Chat,
    ChatKind,
    IdempotencyRecord,
    Membership,
    Message,
    idempotency_key,
)
from messaging.durability.ports import (
    TRANSACTION_MAX_BYTES,
    Append,
    AppendOutcome,
    MessageStore,
    RemoveOutcome,
    transaction_items,
)
from tests.contract.stores import TARGETS, open_store

NOW = 1_700_000_000


@pytest.fixture(params=TARGETS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[MessageStore]:
    async with open_store(request.param) as opened:
        yield opened


async def new_group(store: MessageStore, *members: str) -> Chat:
    chat = Chat(
        chat_id=new_group_id(),
        kind=ChatKind.GROUP,
        title="t",
        created_by=members[0],
        created_at_ms=NOW * 1000,
    )
    created, was_new = await store.create_chat(
        chat, [Membership(chat_id=chat.chat_id, user_id=m, joined_seq=0) for m in members]
    )
    assert was_new
    return created


def msg(
    chat: Chat, seq: int, sender: str, cmid: str | None = None, text: str = "hi"
) -> tuple[Message, IdempotencyRecord]:
    cmid = cmid or uuid.uuid4().hex
    message = Message(
        chat_id=chat.chat_id,
        sequence=seq,
        sender_id=sender,
        sender_device="dev1",
        client_message_id=cmid,
        text=text,
        created_at_ms=NOW * 1000 + seq,
    )
    record = IdempotencyRecord(
        sender_id=sender,
        client_message_id=cmid,
        chat_id=chat.chat_id,
        sequence=seq,
        text_sha256="h",
        expires_at=NOW + 86400,
    )
    return message, record


async def append(
    store: MessageStore, chat: Chat, seq: int, sender: str, **kw: str
) -> AppendOutcome:
    message, record = msg(chat, seq, sender, **kw)
    return await store.try_append(message, seq - 1, record)


async def test_create_chat_is_idempotent_for_a_direct_chat(store: MessageStore) -> None:
    a, b = new_user_id(), new_user_id()
    chat = Chat(
        chat_id=direct_chat_id(a, b),
        kind=ChatKind.DIRECT,
        title="",
        created_by=a,
        created_at_ms=1,
    )
    members = [Membership(chat_id=chat.chat_id, user_id=u, joined_seq=0) for u in (a, b)]
    first, created = await store.create_chat(chat, members)
    again, created_again = await store.create_chat(
        Chat(
            chat_id=chat.chat_id,
            kind=ChatKind.DIRECT,
            title="",
            created_by=b,
            created_at_ms=2,
        ),
        members,
    )
    assert (created, created_again) == (True, False)
    assert again == first
    assert first.head == 0
    assert {m.user_id for m in await store.list_members(chat.chat_id)} == {a, b}
    assert [m.chat_id for m in await store.list_memberships_of(a)] == [chat.chat_id]


async def test_append_is_conditional_on_the_head(store: MessageStore) -> None:
    alice = new_user_id()
    chat = await new_group(store, alice)
    assert await append(store, chat, 1, alice) is AppendOutcome.APPENDED
    # A writer that still believes the head is 0 loses, and writes nothing.
    stale, record = msg(chat, 1, alice)
    assert await store.try_append(stale, 0, record) is AppendOutcome.HEAD_MOVED
    assert await store.get_idempotency(record.key) is None
    assert await append(store, chat, 2, alice) is AppendOutcome.APPENDED
    stored = await store.get_chat(chat.chat_id)
    assert stored is not None
    assert stored.head == 2
    assert stored.last_message_at_ms == NOW * 1000 + 2
    assert [m.sequence for m in await store.read_messages(chat.chat_id, 1, 10, limit=10)] == [1, 2]


async def test_a_duplicate_key_writes_nothing(store: MessageStore) -> None:
    alice = new_user_id()
    chat = await new_group(store, alice)
    assert await append(store, chat, 1, alice, cmid="same") is AppendOutcome.APPENDED
    assert await append(store, chat, 2, alice, cmid="same") is AppendOutcome.DUPLICATE_KEY
    stored = await store.get_chat(chat.chat_id)
    assert stored is not None
    assert stored.head == 1
    assert await store.read_messages(chat.chat_id, 2, 2, limit=1) == []
    record = await store.get_idempotency(idempotency_key(alice, "same"))
    assert record is not None
    assert record.sequence == 1


async def test_an_expired_idempotency_record_may_be_replaced(store: MessageStore) -> None:
    alice = new_user_id()
    chat = await new_group(store, alice)
    message, record = msg(chat, 1, alice, cmid="old")
    expired = IdempotencyRecord(
        sender_id=alice,
        client_message_id="old",
        chat_id=chat.chat_id,
        sequence=1,
        text_sha256="h",
        expires_at=NOW - 10,
    )
    assert await store.try_append(message, 0, expired) is AppendOutcome.APPENDED
    again, record = msg(chat, 2, alice, cmid="old")
    assert await store.try_append(again, 1, record) is AppendOutcome.APPENDED
    stored = await store.get_idempotency(idempotency_key(alice, "old"))
    assert stored is not None
    assert stored.sequence == 2


async def test_non_members_cannot_append(store: MessageStore) -> None:
    alice, bob, mallory = new_user_id(), new_user_id(), new_user_id()
    chat = await new_group(store, alice, bob)
    assert await append(store, chat, 1, mallory) is AppendOutcome.NOT_A_MEMBER
    assert await store.remove_membership(chat.chat_id, bob, 0) is RemoveOutcome.REMOVED
    outcome = await append(store, chat, 1, bob, cmid="after-removal")
    assert outcome is AppendOutcome.NOT_A_MEMBER
    assert await store.get_idempotency(idempotency_key(bob, "after-removal")) is None
    stored = await store.get_chat(chat.chat_id)
    assert stored is not None
    assert stored.head == 0


async def test_remove_membership_is_conditional_on_the_head(store: MessageStore) -> None:
    alice, bob = new_user_id(), new_user_id()
    chat = await new_group(store, alice, bob)
    assert await append(store, chat, 1, alice) is AppendOutcome.APPENDED
    assert await store.remove_membership(chat.chat_id, bob, 0) is RemoveOutcome.HEAD_MOVED
    assert await store.remove_membership(chat.chat_id, bob, 1) is RemoveOutcome.REMOVED
    assert await store.remove_membership(chat.chat_id, bob, 1) is RemoveOutcome.NOT_A_MEMBER
    membership = await store.get_membership(chat.chat_id, bob)
    assert membership is not None
    assert membership.removed_seq == 1
    assert [m.user_id for m in await store.list_members(chat.chat_id)] == [alice]
    assert await store.list_memberships_of(bob) == []
    # Re-adding overwrites the removed membership.
    await store.put_membership(Membership(chat_id=chat.chat_id, user_id=bob, joined_seq=1))
    assert {m.user_id for m in await store.list_members(chat.chat_id)} == {alice, bob}


async def test_concurrent_appends_at_one_head_have_exactly_one_winner(store: MessageStore) -> None:
    alice = new_user_id()
    chat = await new_group(store, alice)
    outcomes = await asyncio.gather(*(append(store, chat, 1, alice) for _ in range(20)))
    assert outcomes.count(AppendOutcome.APPENDED) == 1
    assert set(outcomes) == {AppendOutcome.APPENDED, AppendOutcome.HEAD_MOVED}
    assert len(await store.read_messages(chat.chat_id, 1, 5, limit=5)) == 1


async def test_read_messages_ranges_pages_and_order(store: MessageStore) -> None:
    alice = new_user_id()
    chat = await new_group(store, alice)
    for seq in range(1, 131):
        assert await append(store, chat, seq, alice, text=f"m{seq}") is AppendOutcome.APPENDED
    ascending = await store.read_messages(chat.chat_id, 1, 130, limit=130)
    assert [m.sequence for m in ascending] == list(range(1, 131))
    assert [m.text for m in ascending[:3]] == ["m1", "m2", "m3"]
    window = await store.read_messages(chat.chat_id, 11, 50, limit=15)
    assert [m.sequence for m in window] == list(range(11, 26))
    newest = await store.read_messages(chat.chat_id, 1, 130, limit=5, descending=True)
    assert [m.sequence for m in newest] == [130, 129, 128, 127, 126]
    assert await store.read_messages(chat.chat_id, 131, 200, limit=10) == []


async def test_text_round_trips_exactly(store: MessageStore) -> None:
    alice = new_user_id()
    chat = await new_group(store, alice)
    text = '👩‍👩‍👧‍👦 e\u0301 שלום 🇺🇦 \u200d\t\n"quotes" <b>&amp;'
    assert await append(store, chat, 1, alice, text=text) is AppendOutcome.APPENDED
    [stored] = await store.read_messages(chat.chat_id, 1, 1, limit=1)
    assert stored.text.encode() == text.encode()


async def test_last_acked_only_moves_forward(store: MessageStore) -> None:
    alice = new_user_id()
    chat_id = new_group_id()
    assert await store.get_last_acked(alice, [chat_id]) == {}
    assert await store.advance_last_acked(alice, chat_id, 5) == 5
    assert await store.advance_last_acked(alice, chat_id, 3) == 5
    assert await store.advance_last_acked(alice, chat_id, 7) == 7
    assert await store.get_last_acked(alice, [chat_id]) == {chat_id: 7}


async def test_get_chats_reads_more_than_one_batch(store: MessageStore) -> None:
    alice = new_user_id()
    chats = await asyncio.gather(*(new_group(store, alice) for _ in range(105)))
    wanted = [c.chat_id for c in chats] + ["g_" + "0" * 32]
    found = await store.get_chats(wanted)
    assert set(found) == {c.chat_id for c in chats}
    assert len(await store.list_memberships_of(alice)) == 105


# ---------------------------------------------------------------- group commit (ADR 0024)


def batch(chat: Chat, head: int, *senders: str, text: str = "hi") -> list[Append]:
    return [Append(*msg(chat, head + i, sender, text=text)) for i, sender in enumerate(senders, 1)]


async def sequences(store: MessageStore, chat: Chat) -> list[int]:
    return [m.sequence for m in await store.read_messages(chat.chat_id, 1, 500, limit=500)]


async def test_a_batch_appends_gapless_after_the_head_in_one_step(store: MessageStore) -> None:
    alice, bob = new_user_id(), new_user_id()
    chat = await new_group(store, alice, bob)
    assert await append(store, chat, 1, alice) is AppendOutcome.APPENDED
    appends = batch(chat, 1, alice, bob, alice, bob)
    outcome = await store.append_batch(chat.chat_id, 1, appends)
    assert outcome.appended
    stored = await store.get_chat(chat.chat_id)
    assert stored is not None
    assert stored.head == 5
    assert stored.last_message_at_ms == appends[-1].message.created_at_ms
    assert await sequences(store, chat) == [1, 2, 3, 4, 5]
    for append_ in appends:
        record = await store.get_idempotency(append_.record.key)
        assert record is not None
        assert record.sequence == append_.message.sequence


async def test_a_batch_on_a_stale_head_writes_nothing(store: MessageStore) -> None:
    alice = new_user_id()
    chat = await new_group(store, alice)
    assert await append(store, chat, 1, alice) is AppendOutcome.APPENDED
    appends = batch(chat, 0, alice, alice, alice)
    outcome = await store.append_batch(chat.chat_id, 0, appends)
    assert outcome.head_moved
    assert not outcome.rejected
    # The head that won, named by the failed transaction (ADR 0034): no read to retry.
    assert outcome.head == 1
    assert await sequences(store, chat) == [1]
    assert all([await store.get_idempotency(a.record.key) is None for a in appends])


async def test_a_stored_key_in_a_batch_is_named_and_nothing_is_written(
    store: MessageStore,
) -> None:
    alice = new_user_id()
    chat = await new_group(store, alice)
    assert await append(store, chat, 1, alice, cmid="same") is AppendOutcome.APPENDED
    appends = batch(chat, 1, alice, alice, alice)
    appends[1] = Append(*msg(chat, 3, alice, cmid="same"))
    outcome = await store.append_batch(chat.chat_id, 1, appends)
    assert outcome.rejected == {1: AppendOutcome.DUPLICATE_KEY}
    assert await sequences(store, chat) == [1]
    retry = [Append(*msg(chat, 2, alice, cmid=appends[0].record.client_message_id))]
    assert (await store.append_batch(chat.chat_id, 1, retry)).appended
    assert await sequences(store, chat) == [1, 2]


async def test_a_non_member_in_a_batch_is_named_and_nothing_is_written(
    store: MessageStore,
) -> None:
    alice, bob, mallory = new_user_id(), new_user_id(), new_user_id()
    chat = await new_group(store, alice, bob)
    appends = batch(chat, 0, alice, mallory, bob, mallory)
    outcome = await store.append_batch(chat.chat_id, 0, appends)
    assert outcome.rejected == {1: AppendOutcome.NOT_A_MEMBER, 3: AppendOutcome.NOT_A_MEMBER}
    assert await sequences(store, chat) == []
    stored = await store.get_chat(chat.chat_id)
    assert stored is not None
    assert stored.head == 0
    assert (await store.append_batch(chat.chat_id, 0, batch(chat, 0, alice, bob))).appended
    assert await sequences(store, chat) == [1, 2]


async def test_the_largest_batch_fits_one_transaction(store: MessageStore) -> None:
    # One sender: 1 + 3 x 32 + 1 = 98 items, each message at the 4 KiB text limit.
    alice = new_user_id()
    chat = await new_group(store, alice)
    appends = batch(chat, 0, *[alice] * 32, text="x" * 4096)
    assert transaction_items(appends) == 98
    assert (await store.append_batch(chat.chat_id, 0, appends)).appended
    assert await sequences(store, chat) == list(range(1, 33))


@pytest.mark.parametrize(
    ("count", "text"),
    [(33, "x"), (1, "x" * (TRANSACTION_MAX_BYTES // 2))],
    ids=["over-100-items", "over-4-MB"],
)
async def test_a_batch_over_the_transaction_limits_is_refused_before_writing(
    store: MessageStore, count: int, text: str
) -> None:
    alice = new_user_id()
    chat = await new_group(store, alice)
    with pytest.raises(ValueError, match="at most"):
        await store.append_batch(chat.chat_id, 0, batch(chat, 0, *[alice] * count, text=text))
    assert await sequences(store, chat) == []


async def test_a_batch_must_be_consecutive_and_hold_each_key_once(store: MessageStore) -> None:
    alice = new_user_id()
    chat = await new_group(store, alice)
    gap = [Append(*msg(chat, 1, alice)), Append(*msg(chat, 3, alice))]
    with pytest.raises(ValueError, match="without a gap"):
        await store.append_batch(chat.chat_id, 0, gap)
    twice = [Append(*msg(chat, 1, alice, cmid="k")), Append(*msg(chat, 2, alice, cmid="k"))]
    with pytest.raises(ValueError, match="each idempotency key once"):
        await store.append_batch(chat.chat_id, 0, twice)
    assert await sequences(store, chat) == []


async def test_concurrent_batches_on_one_head_commit_exactly_one(store: MessageStore) -> None:
    alice, bob = new_user_id(), new_user_id()
    chat = await new_group(store, alice, bob)
    outcomes = await asyncio.gather(
        *(store.append_batch(chat.chat_id, 0, batch(chat, 0, alice, bob)) for _ in range(4))
    )
    assert sum(o.appended for o in outcomes) == 1
    assert all(o.head_moved for o in outcomes if not o.appended)
    assert await sequences(store, chat) == [1, 2]


async def test_a_head_claim_holds_other_writers_back_until_its_writer_appends(
    store: MessageStore,
) -> None:
    """ADR 0034: a claim by writer "a" makes writer "b"'s append fail as a moved head naming
    the claim; "a" appends (clearing it); then "b" appends; a lapsed claim holds nobody."""
    alice = new_user_id()
    chat = await new_group(store, alice)
    claim = await store.claim_head(chat.chat_id, "a", 1_000, 3_000)
    assert claim is not None
    assert (claim.head, claim.claimed, claim.until_ms) == (0, True, 3_000)
    other = await store.claim_head(chat.chat_id, "b", 1_000, 3_000)
    assert other is not None
    assert (other.head, other.claimed, other.until_ms) == (0, False, 3_000)
    blocked = await store.append_batch(
        chat.chat_id, 0, batch(chat, 0, alice), writer="b", now_ms=1_500
    )
    assert blocked.head_moved
    assert (blocked.head, blocked.claimed_until_ms) == (0, 3_000)
    mine = await store.append_batch(
        chat.chat_id, 0, batch(chat, 0, alice), writer="a", now_ms=1_500
    )
    assert mine.appended
    after = await store.append_batch(
        chat.chat_id, 1, batch(chat, 1, alice), writer="b", now_ms=1_600
    )
    assert after.appended
    assert await store.claim_head(chat.chat_id, "a", 2_000, 2_500) is not None
    lapsed = await store.append_batch(
        chat.chat_id, 2, batch(chat, 2, alice), writer="b", now_ms=2_600
    )
    assert lapsed.appended
    assert await sequences(store, chat) == [1, 2, 3]
    assert await store.claim_head("g_" + "0" * 32, "a", 0, 1) is None
