"""``messaging db init`` creates the Kafka topics as well as the tables (ADR 0029, amended
2026-12-02), on the stack's Kafka with topics private to the test (deleted at the end): the
messages topic with its partition count and its dead-letter topic, replicated for the cluster's
size; idempotent; an existing topic with fewer partitions reported; a clear error when Kafka
is unreachable, and ``--no-topics`` for deployments whose topics are provisioned elsewhere."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from messaging import cli
from messaging.settings import Settings, env_var
from tests.harness import free_port


async def describe(bootstrap: str, topics: list[str]) -> dict[str, tuple[int, int]]:
    """Each existing topic's (partitions, replicas of partition 0)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {
        t["topic"]: (len(t["partitions"]), len(t["partitions"][0]["replicas"]))
        for t in found
        if t["error_code"] == 0
    }


async def delete(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


@pytest.fixture
def topic(stack: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A messages topic private to the test (its dead-letter topic too), deleted afterwards;
    the session's tables."""
    name = f"db-init-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(env_var("table_prefix"), stack.table_prefix)
    monkeypatch.setenv(env_var("kafka_bootstrap"), stack.kafka_bootstrap)
    monkeypatch.setenv(env_var("kafka_messages_topic"), name)
    monkeypatch.setenv(env_var("kafka_messages_partitions"), "3")
    yield name
    asyncio.run(delete(stack.kafka_bootstrap, [name, f"{name}.dlq"]))


def test_db_init_creates_the_topics_once_and_reports_a_topic_with_fewer_partitions(
    stack: Settings, topic: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dlq = f"{topic}.dlq"
    assert cli.main(["db", "init"]) == 0
    out = capsys.readouterr().out
    assert "== tables: " in out
    assert f"== topics: 2 created: {topic} (3 partitions), {dlq} (1 partition), 0 existing" in out
    found = asyncio.run(describe(stack.kafka_bootstrap, [topic, dlq]))
    brokers = stack.stack_kafka_brokers
    assert found == {topic: (3, min(brokers, 3)), dlq: (1, min(brokers, 3))}

    assert cli.main(["db", "init"]) == 0  # idempotent
    assert "== topics: 0 created, 2 existing" in capsys.readouterr().out

    monkeypatch.setenv(env_var("kafka_messages_partitions"), "5")
    assert cli.main(["db", "init"]) == 1
    err = capsys.readouterr().err
    assert f"topic {topic} has 3 partition(s), the settings ask 5" in err
    assert "left as it is" in err
    assert asyncio.run(describe(stack.kafka_bootstrap, [topic]))[topic][0] == 3


def test_db_init_says_kafka_is_unreachable_and_no_topics_does_not_contact_it(
    topic: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv(env_var("kafka_bootstrap"), nowhere)
    started = time.monotonic()
    assert cli.main(["db", "init"]) == 1
    assert time.monotonic() - started < 20
    captured = capsys.readouterr()
    assert "== tables: " in captured.out
    assert f"Kafka at {nowhere} is unreachable" in captured.err
    assert "--no-topics" in captured.err

    assert cli.main(["db", "init", "--no-topics"]) == 0
    captured = capsys.readouterr()
    assert "== tables: " in captured.out
    assert "topics" not in captured.out


def test_db_init_with_the_cluster_size_waits_for_it_and_says_when_it_is_not_there(
    stack: Settings, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--brokers N``: topics replicated for N, created only once N brokers have registered
    (a production cluster with a node briefly away must not get topics of fewer copies); when
    fewer register, a clear error and nothing created."""
    from messaging.infra.kafka import TopicsError, ensure_topics

    brokers = stack.stack_kafka_brokers
    more = {f"{topic}-more": 1}
    with pytest.raises(TopicsError, match=f"only {brokers} of the {brokers + 1} brokers"):
        asyncio.run(
            ensure_topics(stack.kafka_bootstrap, more, brokers=brokers + 1, timeout_seconds=4)
        )
    assert asyncio.run(describe(stack.kafka_bootstrap, list(more))) == {}

    assert cli.main(["db", "init", "--brokers", "0"]) == 2
    assert "--brokers must be 1 or more" in capsys.readouterr().err
    assert cli.main(["db", "init", "--brokers", str(brokers)]) == 0
    copies = f"{min(brokers, 3)} replica(s) on {brokers} broker(s)"
    assert copies in capsys.readouterr().out
