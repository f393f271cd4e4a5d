"""ChatService with the in-memory store: chats, membership windows, history, delivery state."""

from __future__ import annotations

import pytest

from messaging.domain.errors import Forbidden, InvalidInput, NotAMember, NotFound
from messaging.domain.ids import new_group_id, new_user_id
from messaging.domain.model import ChatKind
from messaging.durability.chats import ChatService
from messaging.durability.config import DurabilityConfig
from messaging.durability.ingest import IngestService
from tests.fakes.durability import FakeUserDirectory, InMemoryMessageStore

CONFIG = DurabilityConfig(max_group_members=5)


class World:
    def __init__(self, users: int = 4) -> None:
        self.users = [new_user_id() for _ in range(users)]
        self.store = InMemoryMessageStore()
        self.chats = ChatService(
            self.store, FakeUserDirectory(self.users), CONFIG, clock=lambda: 5.0
        )
        self.ingest = IngestService(self.store, CONFIG, clock=lambda: 5.0)
        self._n = 0

    async def send(self, sender: str, chat_id: str, text: str = "x") -> int:
        self._n += 1
        result = await self.ingest.send(
            sender_id=sender,
            sender_device="d",
            chat_id=chat_id,
            client_message_id=f"c{self._n}",
            text=text,
        )
        return result.message.sequence


async def test_a_direct_chat_is_found_again_not_duplicated() -> None:
    w = World()
    a, b = w.users[:2]
    chat, created = await w.chats.create_direct(a, b)
    again, created_again = await w.chats.create_direct(b, a)
    assert (created, created_again) == (True, False)
    assert again.chat_id == chat.chat_id
    assert chat.kind is ChatKind.DIRECT
    assert sorted(await w.chats.active_members(chat.chat_id)) == sorted([a, b])


async def test_direct_chat_rules() -> None:
    w = World()
    a = w.users[0]
    with pytest.raises(InvalidInput, match="another user"):
        await w.chats.create_direct(a, a)
    stranger = new_user_id()
    with pytest.raises(NotFound, match=stranger):
        await w.chats.create_direct(a, stranger)


async def test_group_size_limit_and_unknown_members() -> None:
    w = World(users=7)
    owner, *others = w.users
    with pytest.raises(InvalidInput, match="at most 5 members"):
        await w.chats.create_group(owner, "big", others)
    ghost = new_user_id()
    with pytest.raises(NotFound, match=f"unknown user\\(s\\): {ghost}"):
        await w.chats.create_group(owner, "g", [others[0], ghost])
    with pytest.raises(InvalidInput, match="title"):
        await w.chats.create_group(owner, "  ", [others[0]])
    group = await w.chats.create_group(owner, "ok", others[:4])
    assert len(await w.chats.active_members(group.chat_id)) == 5
    with pytest.raises(InvalidInput, match="at most 5"):
        await w.chats.add_members(owner, group.chat_id, [others[4]])


async def test_only_members_manage_a_group_and_direct_chats_are_fixed() -> None:
    w = World()
    a, b, c, d = w.users
    group = await w.chats.create_group(a, "g", [b])
    with pytest.raises(NotFound, match="does not exist or you are not in it"):
        await w.chats.add_members(c, group.chat_id, [d])
    with pytest.raises(NotFound, match="does not exist or you are not in it"):
        await w.chats.remove_member(c, group.chat_id, b)
    direct, _ = await w.chats.create_direct(a, b)
    with pytest.raises(Forbidden, match="fixed members"):
        await w.chats.add_members(a, direct.chat_id, [c])
    with pytest.raises(NotFound):
        await w.chats.add_members(a, new_group_id(), [c])


async def test_a_new_member_sees_from_joining_and_a_removed_one_until_removal() -> None:
    w = World()
    a, b, c, _ = w.users
    group = await w.chats.create_group(a, "g", [b])
    for _ in range(3):
        await w.send(a, group.chat_id)
    assert await w.chats.add_members(a, group.chat_id, [c]) == [c]
    await w.send(a, group.chat_id)  # 4
    removed_at = await w.chats.remove_member(a, group.chat_id, b)
    assert removed_at == 4
    await w.send(a, group.chat_id)  # 5
    page_c = await w.chats.history(c, group.chat_id)
    assert [m.sequence for m in page_c.messages] == [4, 5]
    page_b = await w.chats.history(b, group.chat_id)
    assert [m.sequence for m in page_b.messages] == [1, 2, 3, 4]
    assert page_b.visible_head == 4
    # A removed member reads up to the removal point, sends and manages nothing.
    with pytest.raises(NotAMember):
        await w.send(b, group.chat_id)
    with pytest.raises(NotAMember):
        await w.chats.add_members(b, group.chat_id, [a])
    assert await w.chats.ack(b, group.chat_id, 4) == 4
    with pytest.raises(InvalidInput, match="past the chat head 4"):
        await w.chats.ack(b, group.chat_id, 5)
    assert sorted(await w.chats.active_members(group.chat_id)) == sorted([a, c])
    with pytest.raises(NotFound, match="not a member"):
        await w.chats.remove_member(a, group.chat_id, b)


async def test_history_pages_cover_a_thousand_messages_once_in_order() -> None:
    w = World()
    a, b = w.users[:2]
    chat, _ = await w.chats.create_direct(a, b)
    for i in range(1000):
        await w.send(a if i % 2 else b, chat.chat_id, f"m{i + 1}")
    seen: list[int] = []
    after = 0
    while True:
        page = await w.chats.history(b, chat.chat_id, after=after, limit=100)
        seen.extend(m.sequence for m in page.messages)
        if not page.has_more:
            break
        after = page.messages[-1].sequence
    assert seen == list(range(1, 1001))
    # Going back from the newest page with `before`.
    back: list[int] = []
    page = await w.chats.history(b, chat.chat_id, limit=100)
    back = [m.sequence for m in page.messages] + back
    while page.has_more:
        page = await w.chats.history(b, chat.chat_id, before=page.messages[0].sequence, limit=100)
        back = [m.sequence for m in page.messages] + back
    assert back == list(range(1, 1001))
    with pytest.raises(InvalidInput, match="limit"):
        await w.chats.history(b, chat.chat_id, limit=101)


async def test_history_is_for_members_only() -> None:
    w = World()
    a, b, c, _ = w.users
    chat, _ = await w.chats.create_direct(a, b)
    with pytest.raises(NotFound) as outsider:
        await w.chats.history(c, chat.chat_id)
    with pytest.raises(NotFound):
        await w.chats.ack(c, chat.chat_id, 0)
    # The same answer as for a chat that does not exist: an outsider learns nothing.
    missing = "d_" + "0" * 32
    with pytest.raises(NotFound) as unknown:
        await w.chats.history(c, missing)
    assert outsider.value.message.replace(chat.chat_id, missing) == unknown.value.message


async def test_acks_only_move_forward_and_never_past_head() -> None:
    w = World()
    a, b = w.users[:2]
    chat, _ = await w.chats.create_direct(a, b)
    for _ in range(5):
        await w.send(a, chat.chat_id)
    assert await w.chats.ack(b, chat.chat_id, 3) == 3
    assert await w.chats.ack(b, chat.chat_id, 2) == 3
    with pytest.raises(InvalidInput, match="past the chat head 5"):
        await w.chats.ack(b, chat.chat_id, 6)
    with pytest.raises(InvalidInput, match="negative"):
        await w.chats.ack(b, chat.chat_id, -1)


async def test_an_ack_of_a_delivered_sequence_is_only_the_forward_write() -> None:
    w = World()
    a, b = w.users[:2]
    chat, _ = await w.chats.create_direct(a, b)
    for _ in range(3):
        await w.send(a, chat.chat_id)
    assert await w.chats.ack_delivered(b, chat.chat_id, 2) == 2
    assert await w.chats.ack_delivered(b, chat.chat_id, 1) == 2
    assert await w.chats.ack(b, chat.chat_id, 3) == 3
    with pytest.raises(InvalidInput, match="positive"):
        await w.chats.ack_delivered(b, chat.chat_id, 0)
    with pytest.raises(InvalidInput, match="not a chat id"):
        await w.chats.ack_delivered(b, "nope", 1)


async def test_list_chats_reports_head_last_acked_and_unread() -> None:
    w = World()
    a, b, c, _ = w.users
    direct, _ = await w.chats.create_direct(a, b)
    group = await w.chats.create_group(a, "g", [b, c])
    for _ in range(4):
        await w.send(a, direct.chat_id)
    await w.send(c, group.chat_id)
    await w.chats.ack(b, direct.chat_id, 1)
    summaries = {s.chat.chat_id: s for s in await w.chats.list_chats(b)}
    assert summaries[direct.chat_id].chat.head == 4
    assert summaries[direct.chat_id].last_acked_sequence == 1
    assert summaries[direct.chat_id].unread == 3
    assert summaries[group.chat_id].unread == 1
    await w.chats.remove_member(c, group.chat_id, b)
    assert [s.chat.chat_id for s in await w.chats.list_chats(b)] == [direct.chat_id]
