"""The ``Outbox`` contract (fake, dynoxide, moto) and the relay's repair path on each."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from messaging.domain.ids import new_group_id, new_user_id
from messaging.domain.model import Chat, ChatKind, Membership
from messaging.durability.config import DurabilityConfig
from messaging.durability.ingest import IngestService
from messaging.durability.outbox import OutboxRelay
from messaging.durability.ports import MessageStore, Outbox, OutboxEntry
from messaging.metrics import Metrics
from tests.contract.stores import TARGETS, open_store_and_outbox
from tests.fakes.durability import RecordingPublisher

NOW = 1_700_000_000.0


@pytest.fixture(params=TARGETS)
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[MessageStore, Outbox]]:
    async with open_store_and_outbox(request.param) as opened:
        yield opened


async def chat_with(store: MessageStore, user: str) -> str:
    chat = Chat(
        chat_id=new_group_id(), kind=ChatKind.GROUP, title="t", created_by=user, created_at_ms=0
    )
    await store.create_chat(chat, [Membership(chat_id=chat.chat_id, user_id=user, joined_seq=0)])
    return chat.chat_id


async def send_three(store: MessageStore, clock: list[float]) -> tuple[str, IngestService]:
    alice = new_user_id()
    chat_id = await chat_with(store, alice)
    ingest = IngestService(store, DurabilityConfig(), clock=lambda: clock[0])
    for i in range(3):
        clock[0] += 0.01
        await ingest.send(
            sender_id=alice, sender_device="d", chat_id=chat_id, client_message_id=f"m{i}", text="x"
        )
    return chat_id, ingest


async def test_every_append_leaves_an_outbox_entry_until_cleared(
    pair: tuple[MessageStore, Outbox],
) -> None:
    store, outbox = pair
    clock = [NOW]
    chat_id, _ = await send_three(store, clock)
    mine = [e for e in await outbox.pending(int(clock[0] * 1000) + 1, 100) if e.chat_id == chat_id]
    assert [e.sequence for e in mine] == [1, 2, 3]
    assert all(e.chat_id != chat_id for e in await outbox.pending(int(NOW * 1000), 100))
    await outbox.clear(mine[:2])
    left = [e for e in await outbox.pending(int(clock[0] * 1000) + 1, 100) if e.chat_id == chat_id]
    assert left == [OutboxEntry(chat_id, 3, mine[2].created_at_ms)]


async def test_the_sweeper_publishes_what_a_dead_process_left(
    pair: tuple[MessageStore, Outbox],
) -> None:
    store, outbox = pair
    clock = [NOW]
    chat_id, _ = await send_three(store, clock)  # persisted, never submitted: "the process died"
    publisher = RecordingPublisher()
    relay = OutboxRelay(
        store, outbox, publisher, Metrics(), repair_after_seconds=2.0, clock=lambda: clock[0]
    )
    assert await relay.sweep_once() == 0  # too young: the sending process may still publish
    clock[0] += 2.5
    publisher.fail = True  # Kafka down: nothing published, the entries stay for the next sweep
    await relay.sweep_once()
    assert publisher.published == []
    assert (
        len([e for e in await outbox.pending(int(clock[0] * 1000), 100) if e.chat_id == chat_id])
        == 3
    )
    publisher.fail = False
    await relay.sweep_once()
    assert [(m.chat_id, m.sequence) for m in publisher.published] == [
        (chat_id, s) for s in (1, 2, 3)
    ]
    assert [
        e for e in await outbox.pending(int(clock[0] * 1000), 100) if e.chat_id == chat_id
    ] == []
