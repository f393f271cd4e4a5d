"""Poison records on the messages topic (ADR 0030): written between real messages under traffic
on two app processes, into every partition. Each lands in the dead-letter topic with the
partition and offset it had, is counted in ``/metrics``, and its partition keeps flowing: every
member converges *without* an explicit sync (a stalled partition would hold back every later
message of its chats), and the checker passes. docs/failure-scenarios.md records how this was
shown to fail with parking switched off.
"""

from __future__ import annotations

import asyncio
import random

from messaging.bootstrap import open_dead_letter_topic
from messaging.domain.ids import new_group_id
from messaging.domain.model import Message
from messaging.infra.kafka import open_producer
from messaging.protocol.wire import encode_event
from tests.scenarios.harness import Scenario, Traffic
from tests.scenarios.test_stack_faults import population


def _event(chat_id: str) -> bytes:
    return encode_event(
        Message(
            chat_id=chat_id,
            sequence=1,
            sender_id=f"u_{'0' * 32}",
            sender_device="d",
            client_message_id="poison",
            text="poison",
            created_at_ms=1_700_000_000_000,
        )
    )


POISONS = {
    "garbage": b"\x00\xff not an event at all",
    "future version": b'{"v": 2, "chat_id": "g_x"}',
    "no possible chat": _event("g_not-a-chat-id"),
}
"""What can never be fanned out: two undecodable records and one naming no possible chat
(a permanent ``InvalidInput`` in the fanout)."""


async def test_poison_records_are_parked_with_their_place_and_their_partitions_keep_flowing(
    isolated: Scenario,
) -> None:
    scenario = isolated
    settings = scenario.settings
    members = await population(scenario)
    traffic = Traffic(members, random.Random(31)).start()
    parked: set[tuple[int, int]] = set()
    harmless: set[tuple[int, int]] = set()
    try:
        await asyncio.sleep(2.0)
        async with (
            scenario.fault("poison records"),
            open_producer(settings.kafka_bootstrap, client_id="poisoner") as producer,
        ):
            for partition in range(settings.kafka_messages_partitions):
                for value in POISONS.values():
                    sent = await producer.send_and_wait(
                        settings.kafka_messages_topic, value, partition=partition
                    )
                    parked.add((sent.partition, sent.offset))
                    await asyncio.sleep(0.05)  # real messages between the poisons
                # A well-formed chat nobody created: fanned out to no one, not a dead letter.
                sent = await producer.send_and_wait(
                    settings.kafka_messages_topic, _event(new_group_id()), partition=partition
                )
                harmless.add((sent.partition, sent.offset))
        scenario.note(f"{len(parked)} poison records written into every partition")
        await asyncio.sleep(6.0)
    finally:
        await traffic.stop()
    await scenario.settle_sends()
    await scenario.converge(seconds=20)
    async with open_dead_letter_topic(settings) as topic:
        letters = await topic.list(1000)
    where = {(d.partition, d.source_offset) for d in letters}
    assert where == parked, (sorted(parked - where), sorted(where - parked))
    assert not where & harmless
    counted = sum(
        [await app.metric("messaging_fanout_dead_letters_total") for app in scenario.apps]
    )
    assert counted == len(parked), counted
    scenario.note(f"{len(letters)} dead letters, each with its partition and offset")
    await scenario.final_check()
