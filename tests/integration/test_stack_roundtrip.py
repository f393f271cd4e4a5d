"""The foundation's acceptance: real round trips through each service with the project's
adapters, and the app's readiness reflecting each dependency."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from messaging.infra.dynamodb import DynamoDBClient
from messaging.infra.kafka import open_consumer, open_producer
from messaging.infra.redis import open_redis
from messaging.infra.schema import CHATS, table_name
from messaging.settings import Settings
from tests.harness import AppProcess


async def test_kafka_produce_and_consume(stack: Settings) -> None:
    key = uuid.uuid4().hex.encode()
    async with open_producer(stack.kafka_bootstrap, client_id="test") as producer:
        sent = await producer.send_and_wait(stack.kafka_messages_topic, b"hello", key=key)
    async with open_consumer(
        stack.kafka_bootstrap,
        (stack.kafka_messages_topic,),
        group_id=f"roundtrip-{uuid.uuid4().hex}",
        client_id="test",
    ) as consumer:
        async with asyncio.timeout(30):
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                found = [r for rs in batch.values() for r in rs if r.key == key]
                if found:
                    break
    assert found[0].value == b"hello"
    assert (found[0].partition, found[0].offset) == (sent.partition, sent.offset)


async def test_dynamodb_write_and_read(stack: Settings, dynamodb: DynamoDBClient) -> None:
    table = table_name(stack.table_prefix, CHATS)
    chat_id = uuid.uuid4().hex
    await dynamodb.put_item(
        TableName=table, Item={"chat_id": {"S": chat_id}, "title": {"S": "héllo 👋"}}
    )
    got = await dynamodb.get_item(
        TableName=table, Key={"chat_id": {"S": chat_id}}, ConsistentRead=True
    )
    assert got["Item"]["title"] == {"S": "héllo 👋"}


async def test_redis_set_and_get(stack: Settings) -> None:
    async with open_redis(stack.redis_url) as redis:
        key = f"test:{uuid.uuid4().hex}"
        await redis.set(key, "value", ex=10)
        assert await redis.get(key) == b"value"


def test_app_processes_are_alive_and_ready(apps: list[AppProcess]) -> None:
    for app in apps:
        assert httpx.get(app.base_url + "/healthz").json() == {
            "status": "alive",
            "instance": app.instance_id,
        }
        ready = httpx.get(app.base_url + "/readyz")
        assert ready.status_code == 200, ready.text
        assert (ready.json()["status"], ready.json()["degraded"]) == ("ready", []), ready.text
        assert ready.json()["checks"] == {
            "kafka": {"ok": True},
            "dynamodb": {"ok": True},
            "store_latency": {"ok": True},  # ADR 0034: a slow store path shows here
            "redis": {"ok": True},
            "background": {"ok": True},
            "routing": {"ok": True},
            "fanout": {"ok": True},  # ADR 0022: a failing partition shows here
            "fanout_progress": {"ok": True},  # ADR 0026: a stalled partition shows here
        }
