"""A stalled fanout partition on the real stack (ADR 0026): an app process on a messages topic
of its own whose dead-letter topic does not exist yet. A poison record on partition 0 cannot be
parked (the producer finds no topic), so the consumer holds it and retries (ADR 0030: never
skipped unrecorded): partition 0 has a record in hand and makes no progress. ``/readyz`` names
partition 0 (not 1, which has nothing pending) under ``fanout_progress`` within the bound, and
``/metrics`` counts it; once ``messaging db init`` creates the dead-letter topic the record is
parked, and both clear."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
from aiokafka.admin import AIOKafkaAdminClient

from messaging.domain.ids import new_group_id
from messaging.domain.model import Message
from messaging.infra.kafka import ensure_topics, open_producer
from messaging.protocol.wire import encode_event
from messaging.settings import Settings, env_var
from tests.harness import AppProcess
from tests.integration.conftest import app_env
from tests.integration.test_db_init import delete

BOUND_MS = 2000
SLACK_SECONDS = 5.0
"""Report within the bound plus a poll, a fetch and a loaded machine's scheduling."""


async def committed(bootstrap: str, group: str, topic: str, partition: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return next(
        (o.offset for tp, o in offsets.items() if (tp.topic, tp.partition) == (topic, partition)),
        -1,
    )


async def eventually(probe: Callable[[], Awaitable[bool]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"{probe.__name__} did not hold within {seconds:g}s")
        await asyncio.sleep(0.1)


async def readyz(http: httpx.AsyncClient) -> tuple[int, list[str], str]:
    answer = await http.get("/readyz")
    body = answer.json()
    return (
        answer.status_code,
        body["degraded"],
        body["checks"].get("fanout_progress", {}).get("error", ""),
    )


async def stalled_gauge(http: httpx.AsyncClient) -> float:
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith("messaging_fanout_stalled_partitions "):
            return float(line.split()[1])
    raise AssertionError("no messaging_fanout_stalled_partitions in /metrics")


async def test_a_stalled_partition_is_named_by_readyz_within_the_bound_and_clears(
    stack: Settings,
) -> None:
    topic = f"stall-{uuid.uuid4().hex[:8]}"
    group = f"{topic}-fanout"
    await ensure_topics(stack.kafka_bootstrap, {topic: 2})  # no dead-letter topic
    app = AppProcess(
        "stall",
        {
            **app_env(stack),
            env_var("kafka_messages_topic"): topic,
            env_var("kafka_consumer_group"): group,
            env_var("fanout_stall_ms"): str(BOUND_MS),
        },
    )
    await asyncio.to_thread(app.start)
    try:
        async with (
            open_producer(stack.kafka_bootstrap, client_id="stall-test") as producer,
            httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        ):
            # A well-formed record of a chat without members first: once it is committed the
            # consumer owns partition 0 and is past it.
            fine = Message(
                chat_id=new_group_id(),
                sequence=1,
                sender_id="u_" + "a" * 32,
                sender_device="d",
                client_message_id="c1",
                text="hi",
                created_at_ms=int(time.time() * 1000),
            )
            await producer.send_and_wait(topic, encode_event(fine), partition=0)

            async def consumed() -> bool:
                return await committed(stack.kafka_bootstrap, group, topic, 0) == 1

            await eventually(consumed, 30)
            assert (await readyz(http))[:2] == (200, [])

            await producer.send_and_wait(topic, b"\xffpoison", partition=0)
            sent = time.monotonic()

            async def reported_stalled() -> bool:
                return "fanout_progress" in (await readyz(http))[1]

            await eventually(reported_stalled, BOUND_MS / 1000 + SLACK_SECONDS)
            reported = time.monotonic() - sent
            status, _, error = await readyz(http)
            assert status == 200  # degraded, not unavailable (ADR 0026, ADR 0033's rule)
            # Partition 0 alone: partition 1 has nothing pending.
            assert re.fullmatch(
                r"RuntimeError: partition\(s\) 0 \(\d+s\) with records pending and no "
                r"progress for longer than 2s",
                error,
            ), error
            assert await stalled_gauge(http) == 1
            print(f"reported {reported:.1f}s after the poison record (bound {BOUND_MS} ms)")

            created = await ensure_topics(stack.kafka_bootstrap, {f"{topic}.dlq": 1})
            assert created.created == (f"{topic}.dlq",)
            healed = time.monotonic()

            async def cleared() -> bool:
                return not await reported_stalled()

            await eventually(cleared, 30)
            print(f"cleared {time.monotonic() - healed:.1f}s after the dead-letter topic")
            assert await stalled_gauge(http) == 0
            assert await committed(stack.kafka_bootstrap, group, topic, 0) == 2
    finally:
        await asyncio.to_thread(app.terminate)
        await delete(stack.kafka_bootstrap, [topic, f"{topic}.dlq"])
