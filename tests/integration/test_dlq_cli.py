"""``messaging dlq list|replay`` against the stack's Kafka, on a private messages topic and its
dead-letter topic (ADR 0030)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from messaging import cli
from messaging.devstack.services import kafka_create_topics
from messaging.domain.ids import new_group_id
from messaging.domain.model import Message
from messaging.fanout.adapters.kafka_dead_letters import KafkaDeadLetters
from messaging.infra.kafka import open_producer
from messaging.settings import Settings, env_var


def test_list_shows_each_dead_letter_and_replay_leaves_the_undecodable_one(
    base_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"dlq-cli-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(env_var("kafka_messages_topic"), topic)
    monkeypatch.setenv(env_var("kafka_bootstrap"), base_settings.kafka_bootstrap)
    chat = new_group_id()
    message = Message(
        chat_id=chat,
        sequence=4,
        sender_id=f"u_{'a' * 32}",
        sender_device="d",
        client_message_id="c4",
        text="hi",
        created_at_ms=1_700_000_000_000,
    )

    async def park() -> None:
        await kafka_create_topics(base_settings.kafka_bootstrap, {topic: 1, f"{topic}.dlq": 1})
        async with open_producer(base_settings.kafka_bootstrap, client_id="test") as producer:
            letters = KafkaDeadLetters(producer, f"{topic}.dlq")
            await letters.park(message, 2, 40, "permanent: InvalidInput")
            await letters.park(b"\xff junk", 6, 41, "undecodable: JSONDecodeError")

    asyncio.run(park())

    assert cli.main(["dlq", "list", "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "== 2 dead letter(s)" in out
    assert "offset 0  parked 20" in out
    assert f"from partition 2 offset 40  {chat}#4" in out
    assert "from partition 6 offset 41  undecodable 6 bytes" in out

    assert cli.main(["dlq", "replay", "--offset", "1"]) == 0
    assert "left offset 1: undecodable" in capsys.readouterr().out
    assert cli.main(["dlq", "replay", "--offset", "9"]) == 1
    assert cli.main(["dlq", "replay", "--all"]) == 0
    out = capsys.readouterr().out
    assert f"replayed offset 0: {chat}#4" in out
    assert "== 1 replayed, 1 left" in out
    assert cli.main(["dlq", "list", "--limit", "0"]) == 2
