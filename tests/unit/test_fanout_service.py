"""FanoutService with fakes: who gets each message, and how often memberships are read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

import pytest

from messaging.domain.errors import InvalidInput
from messaging.domain.ids import direct_chat_id, new_group_id
from messaging.domain.model import Membership
from messaging.fanout.service import FanoutService
from messaging.metrics import Metrics
from tests.fakes.fanout import Local, NoHandoff, message

ALICE, BOB, CAROL = (f"u_{c * 32}" for c in "abc")


class Members:
    def __init__(self) -> None:
        self.chats: dict[str, list[Membership]] = {}
        self.reads: Counter[str] = Counter()

    async def active_memberships(self, chat_id: str) -> list[Membership]:
        self.reads[chat_id] += 1
        return [m for m in self.chats.get(chat_id, []) if m.active]


class EveryoneHere:
    async def lookup(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        return {"here": set(user_ids)}


def world() -> tuple[FanoutService, Members, Local]:
    members, local = Members(), Local()
    service = FanoutService(
        members, EveryoneHere(), NoHandoff(), local, instance_id="here", metrics=Metrics()
    )
    return service, members, local


async def test_a_direct_chats_members_are_read_once() -> None:
    service, members, local = world()
    chat = direct_chat_id(ALICE, BOB)
    members.chats[chat] = [
        Membership(chat_id=chat, user_id=ALICE, joined_seq=0),
        Membership(chat_id=chat, user_id=BOB, joined_seq=0),
    ]
    for sequence in (1, 2, 3):
        await service.fan_out([message(chat, sequence)])
    assert members.reads[chat] == 1
    assert [(d.message.sequence, d.recipients) for d in local.deliveries] == [
        (n, tuple(sorted((ALICE, BOB)))) for n in (1, 2, 3)
    ]


async def test_a_direct_chat_seen_half_created_is_read_again() -> None:
    service, members, _ = world()
    chat = direct_chat_id(ALICE, BOB)
    members.chats[chat] = [Membership(chat_id=chat, user_id=ALICE, joined_seq=0)]
    await service.fan_out([message(chat, 1)])
    members.chats[chat].append(Membership(chat_id=chat, user_id=BOB, joined_seq=0))
    await service.fan_out([message(chat, 2)])
    await service.fan_out([message(chat, 3)])
    assert members.reads[chat] == 2


async def test_a_groups_members_are_read_for_every_batch() -> None:
    service, members, local = world()
    group = new_group_id()
    members.chats[group] = [
        Membership(chat_id=group, user_id=ALICE, joined_seq=0),
        Membership(chat_id=group, user_id=BOB, joined_seq=0),
    ]
    await service.fan_out([message(group, 1)])
    members.chats[group].append(
        Membership(chat_id=group, user_id=CAROL, joined_seq=1)
    )  # joined after message 1
    await service.fan_out([message(group, 2)])
    assert members.reads[group] == 2
    assert [d.recipients for d in local.deliveries] == [
        tuple(sorted((ALICE, BOB))),
        tuple(sorted((ALICE, BOB, CAROL))),
    ]


async def test_a_record_naming_no_possible_chat_fails_permanently_before_any_delivery() -> None:
    """ADR 0030: such a record can never be fanned out; the consumer parks it."""
    service, members, local = world()
    chat = new_group_id()
    members.chats[chat] = [Membership(chat_id=chat, user_id=ALICE, joined_seq=0)]
    with pytest.raises(InvalidInput):
        await service.fan_out([message(chat, 1), message("g_not-a-chat", 2)])
    assert local.deliveries == []
