"""The limits the app is built on, measured in the same run through the same client libraries.

* **DynamoDB API**: exactly the operations of one send (ADR 0004): a consistent ``GetItem`` on
  ``idempotency_keys``, then the 5-item ``TransactWriteItems`` (conditional ``ADD head``, the
  message, the idempotency record, the membership ``ConditionCheck``, the outbox entry), through
  the leanest client (``messaging.infra.dynamodb.open_dynamo``, ``lean``: signed JSON over
  aiohttp, ADR 0023), so that it measures the store and not an SDK; each worker on its own chat
  as in the ``direct`` scenario. The request shapes mirror ``DynamoMessageStore.try_append``
  (adapters are private to the composition root, so they are repeated here); the tables are the
  run's own.
  Closed loop at a concurrency, or open loop at a rate (the latency reference).
* **Kafka**: produce -> consume through aiokafka with the app's producer and consumer settings
  (``messaging.infra.kafka``), a window of unacknowledged sends, records the size of the app's.
* **WebSocket**: round trips on a bare Starlette echo app on one uvicorn process (configured like
  ``messaging serve``), with the ``websockets`` client the client library uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect

from messaging.bench.apps import AppProcess, Namespace
from messaging.bench.hist import Latency
from messaging.bench.procstat import Sampler
from messaging.devstack.services import kafka_create_topics
from messaging.infra.dynamodb import DynamoClient, open_dynamo
from messaging.infra.kafka import open_consumer, open_producer
from messaging.infra.schema import (
    CHAT_MEMBERSHIPS,
    CHATS,
    IDEMPOTENCY_KEYS,
    MESSAGES,
    OUTBOX,
    ensure_tables,
    table_name,
)
from messaging.settings import Settings

Say = Callable[[str], None]


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


class _StoreOps:
    """One send's DynamoDB operations on the baseline tables, for one chat (one worker)."""

    def __init__(self, client: DynamoClient, prefix: str, chat_id: str, user_id: str) -> None:
        self.client = client
        self.chat_id = chat_id
        self.user_id = user_id
        self.head = 0
        self.chats = table_name(prefix, CHATS)
        self.memberships = table_name(prefix, CHAT_MEMBERSHIPS)
        self.messages = table_name(prefix, MESSAGES)
        self.idempotency = table_name(prefix, IDEMPOTENCY_KEYS)
        self.outbox = table_name(prefix, OUTBOX)
        self._ids = itertools.count(1)

    async def setup(self) -> None:
        now = int(time.time() * 1000)
        await self.client.put_item(
            TableName=self.chats,
            Item={
                "chat_id": _s(self.chat_id),
                "kind": _s("group"),
                "title": _s("baseline"),
                "created_by": _s(self.user_id),
                "created_at_ms": _n(now),
                "head": _n(0),
                "last_message_at_ms": _n(0),
            },
        )
        await self.client.put_item(
            TableName=self.memberships,
            Item={
                "chat_id": _s(self.chat_id),
                "user_id": _s(self.user_id),
                "joined_seq": _n(0),
            },
        )

    async def send(self, text: str, get_latency: Latency, tx_latency: Latency) -> None:
        cmid = f"base-{next(self._ids)}"
        key = f"{self.user_id}#{cmid}"
        began = time.monotonic()
        answer = await self.client.get_item(
            TableName=self.idempotency, Key={"key": _s(key)}, ConsistentRead=True
        )
        assert "Item" not in answer
        middle = time.monotonic()
        get_latency.record(middle - began)
        now_ms = int(time.time() * 1000)
        sequence = self.head + 1
        entry = f"{now_ms:013d}#{self.chat_id}#{sequence:012d}"
        await self.client.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": self.chats,
                        "Key": {"chat_id": _s(self.chat_id)},
                        "UpdateExpression": "ADD #h :one SET #t = :now",
                        "ConditionExpression": "#h = :expected",
                        "ExpressionAttributeNames": {"#h": "head", "#t": "last_message_at_ms"},
                        "ExpressionAttributeValues": {
                            ":one": _n(1),
                            ":expected": _n(self.head),
                            ":now": _n(now_ms),
                        },
                    }
                },
                {
                    "Put": {
                        "TableName": self.messages,
                        "Item": {
                            "chat_id": _s(self.chat_id),
                            "sequence": _n(sequence),
                            "sender_id": _s(self.user_id),
                            "sender_device": _s("baseline"),
                            "client_message_id": _s(cmid),
                            "text": _s(text),
                            "created_at_ms": _n(now_ms),
                        },
                        "ConditionExpression": "attribute_not_exists(#c)",
                        "ExpressionAttributeNames": {"#c": "chat_id"},
                    }
                },
                {
                    "Put": {
                        "TableName": self.idempotency,
                        "Item": {
                            "key": _s(key),
                            "sender_id": _s(self.user_id),
                            "client_message_id": _s(cmid),
                            "chat_id": _s(self.chat_id),
                            "sequence": _n(sequence),
                            "text_sha256": _s(hashlib.sha256(text.encode()).hexdigest()),
                            "expires_at": _n(now_ms // 1000 + 7 * 24 * 3600),
                        },
                        "ConditionExpression": "attribute_not_exists(#k) OR #e < :now",
                        "ExpressionAttributeNames": {"#k": "key", "#e": "expires_at"},
                        "ExpressionAttributeValues": {":now": _n(now_ms // 1000)},
                    }
                },
                {
                    "ConditionCheck": {
                        "TableName": self.memberships,
                        "Key": {"chat_id": _s(self.chat_id), "user_id": _s(self.user_id)},
                        "ConditionExpression": "attribute_exists(#u) AND attribute_not_exists(#r)",
                        "ExpressionAttributeNames": {"#u": "user_id", "#r": "removed_seq"},
                    }
                },
                {
                    "Put": {
                        "TableName": self.outbox,
                        "Item": {
                            "shard": _s(f"s{sequence % 4}"),
                            "entry": _s(entry),
                            "chat_id": _s(self.chat_id),
                            "sequence": _n(sequence),
                        },
                    }
                },
            ]
        )
        tx_latency.record(time.monotonic() - middle)
        self.head = sequence


async def dynamodb(
    settings: Settings,
    namespace: Namespace,
    *,
    concurrency: int,
    duration: float,
    max_ops: int,
    rate: float | None = None,
    text_size: int = 64,
    say: Say = print,
) -> dict[str, Any]:
    """One send's DynamoDB operations, closed loop (``concurrency`` workers) or open loop at
    ``rate`` sends/s spread over ``concurrency`` chats. Latency is per send (both calls)."""
    prefix = namespace.baseline_prefix
    text = "x" * text_size
    tag = uuid.uuid4().hex[:8]
    async with open_dynamo(
        settings.dynamodb_endpoint, settings.aws_region, client="lean"
    ) as client:
        await ensure_tables(
            client, prefix, (CHATS, CHAT_MEMBERSHIPS, MESSAGES, OUTBOX, IDEMPOTENCY_KEYS)
        )
        workers = [
            _StoreOps(client, prefix, f"g_base{tag}{k}", f"u_base{tag}{k}")
            for k in range(concurrency)
        ]
        await asyncio.gather(*(w.setup() for w in workers))
        per_send, get_l, tx_l = Latency(), Latency(), Latency()
        errors: Counter[str] = Counter()
        done = 0
        issued = itertools.count()
        began = time.monotonic()
        stop_at = began + duration

        async def one(worker: _StoreOps, due: float) -> None:
            nonlocal done
            try:
                await worker.send(text, get_l, tx_l)
            except Exception as exc:
                errors[type(exc).__name__] += 1
                return
            per_send.record(time.monotonic() - due)
            done += 1

        if rate is None:

            async def loop(worker: _StoreOps) -> None:
                while time.monotonic() < stop_at and next(issued) < max_ops:
                    await one(worker, time.monotonic())

            await asyncio.wait_for(asyncio.gather(*(loop(w) for w in workers)), duration + 30.0)
        else:
            # Each chat takes one send at a time (as the app's per-chat lock does): a worker
            # queue per chat, sends due at the fixed rate round robin over the chats.
            queues: list[asyncio.Queue[float]] = [asyncio.Queue() for _ in workers]

            async def serve(worker: _StoreOps, queue: asyncio.Queue[float]) -> None:
                while True:
                    due = await queue.get()
                    await one(worker, due)
                    queue.task_done()

            servers = [
                asyncio.create_task(serve(w, q)) for w, q in zip(workers, queues, strict=True)
            ]
            sent = 0
            while sent < max_ops and time.monotonic() < stop_at:
                due_count = min(max_ops, int((time.monotonic() - began) * rate) + 1)
                while sent < due_count:
                    queues[sent % len(queues)].put_nowait(began + sent / rate)
                    sent += 1
                await asyncio.sleep(max(0.0, began + sent / rate - time.monotonic()))
            try:
                async with asyncio.timeout(30.0):
                    await asyncio.gather(*(q.join() for q in queues))
            except TimeoutError:
                errors["unfinished"] += sum(q.qsize() for q in queues)
            for task in servers:
                task.cancel()
            await asyncio.gather(*servers, return_exceptions=True)
        elapsed = max(time.monotonic() - began, 1e-6)
    result = {
        "mode": "closed" if rate is None else "open",
        "client": "lean",
        "concurrency": concurrency,
        "offered_rate": rate,
        "seconds": round(elapsed, 2),
        "sends": done,
        "sends_per_s": round(done / elapsed, 1),
        "per_send_ms": per_send.summary(),
        "get_item_ms": get_l.summary(),
        "transact_write_ms": tx_l.summary(),
        "errors": dict(errors),
    }
    say(
        f"baseline dynamodb ({result['mode']}, c={concurrency}"
        + (f", rate={rate:.0f}/s" if rate else "")
        + f"): {result['sends_per_s']:.0f} sends/s, per send p50/p99 "
        f"{per_send.percentile_ms(50):.1f}/{per_send.percentile_ms(99):.1f} ms"
    )
    return result


async def kafka(
    settings: Settings,
    namespace: Namespace,
    *,
    duration: float,
    max_messages: int,
    window: int = 1000,
    text_size: int = 64,
    say: Say = print,
) -> dict[str, Any]:
    """Produce -> consume on the run's baseline topic: ``window`` unacknowledged sends at most,
    consumed by a group consumer with the app's settings."""
    topic = namespace.baseline_topic
    await kafka_create_topics(settings.kafka_bootstrap, {topic: namespace.partitions})
    latency = Latency()
    consumed = 0
    produced = 0
    errors: Counter[str] = Counter()
    body = orjson.dumps(
        {
            "chat_id": "g_" + "0" * 32,
            "sequence": 1,
            "sender_id": "u_" + "0" * 32,
            "sender_device": "bench-device",
            "client_message_id": "bench-0000000000",
            "text": "x" * text_size,
            "created_at_ms": 0,
        }
    )
    async with (
        open_consumer(
            settings.kafka_bootstrap,
            (topic,),
            group_id=f"{topic}-{uuid.uuid4().hex[:6]}",
            client_id="bench-baseline",
            auto_offset_reset="latest",
        ) as consumer,
        open_producer(settings.kafka_bootstrap, client_id="bench-baseline") as producer,
    ):
        deadline = time.monotonic() + 20
        while not consumer.assignment() and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=200)
        # Positions at the end before producing, so only this run's records are counted.
        await consumer.seek_to_end()
        for partition in consumer.assignment():
            await consumer.position(partition)
        done_producing = asyncio.Event()

        async def consume() -> None:
            nonlocal consumed
            while not (done_producing.is_set() and consumed >= produced):
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                now = time.monotonic()
                for records in batches.values():
                    for record in records:
                        sent = float(record.value[:20])
                        latency.record(now - sent)
                        consumed += 1

        consumer_task = asyncio.create_task(consume())
        slots = asyncio.Semaphore(window)
        began = time.monotonic()
        stop_at = began + duration
        pending: set[asyncio.Future[Any]] = set()

        def sent(future: asyncio.Future[Any]) -> None:
            nonlocal produced
            pending.discard(future)
            slots.release()
            if future.cancelled() or future.exception() is not None:
                errors["produce_failed"] += 1
            else:
                produced += 1

        count = 0
        while count < max_messages and time.monotonic() < stop_at:
            await slots.acquire()
            value = f"{time.monotonic():20.6f}".encode() + body
            future = await producer.send(topic, value, key=str(count % 512).encode())
            pending.add(future)
            future.add_done_callback(sent)
            count += 1
        await producer.flush()
        if pending:
            await asyncio.wait(pending, timeout=10)
        produce_end = time.monotonic()
        done_producing.set()
        try:
            async with asyncio.timeout(20):
                await consumer_task
        except TimeoutError:
            errors["not_consumed"] += produced - consumed
        elapsed = max(time.monotonic() - began, 1e-6)
    result = {
        "window": window,
        "seconds": round(elapsed, 2),
        "produced": produced,
        "consumed": consumed,
        "produced_per_s": round(produced / max(produce_end - began, 1e-6), 1),
        "produce_consume_per_s": round(consumed / elapsed, 1),
        "produce_to_consume_ms": latency.summary(),
        "errors": dict(errors),
    }
    say(
        f"baseline kafka (window {window}): {result['produce_consume_per_s']:.0f} msgs/s "
        f"produce->consume, p50/p99 {latency.percentile_ms(50):.1f}/"
        f"{latency.percentile_ms(99):.1f} ms"
    )
    return result


async def websocket_echo(
    log_dir: Path,
    sampler: Sampler,
    *,
    concurrency: int,
    duration: float,
    max_round_trips: int,
    frame_bytes: int = 300,
    say: Say = print,
) -> dict[str, Any]:
    """Round trips on a bare Starlette echo app (its own uvicorn process), ``concurrency``
    connections each with one frame in flight."""
    server = AppProcess("bench-echo", {}, log_dir)
    server.spawn([sys.executable, "-m", "messaging.bench.echo", "--port", str(server.port)])
    latency = Latency()
    errors: Counter[str] = Counter()
    trips = 0
    try:
        await server.wait_healthy(30.0, path="/healthz")
        sampler.track("echo", server.pid)
        url = f"ws://127.0.0.1:{server.port}/echo"
        payload = orjson.dumps({"type": "message", "text": "x" * max(0, frame_bytes - 30)}).decode()
        issued = itertools.count()
        connections = [await connect(url, proxy=None, max_size=1 << 20) for _ in range(concurrency)]
        sampler.sample()
        began = time.monotonic()
        stop_at = began + duration

        async def loop(ws: Any) -> None:
            nonlocal trips
            while time.monotonic() < stop_at and next(issued) < max_round_trips:
                sent = time.monotonic()
                await ws.send(payload)
                await ws.recv()
                latency.record(time.monotonic() - sent)
                trips += 1

        try:
            await asyncio.wait_for(asyncio.gather(*(loop(ws) for ws in connections)), duration + 30)
        except Exception as exc:
            errors[type(exc).__name__] += 1
        elapsed = max(time.monotonic() - began, 1e-6)
        cpu = sampler.sample().get("echo", {})
        for ws in connections:
            await ws.close()
    finally:
        sampler.forget("echo")
        server.stop(10)
    result = {
        "concurrency": concurrency,
        "frame_bytes": len(payload),
        "seconds": round(elapsed, 2),
        "round_trips": trips,
        "round_trips_per_s": round(trips / elapsed, 1),
        "round_trip_ms": latency.summary(),
        "server_cpu_pct": cpu.get("cpu_pct"),
        "errors": dict(errors),
    }
    say(
        f"baseline websocket echo (c={concurrency}): {result['round_trips_per_s']:.0f} round "
        f"trips/s, p50/p99 {latency.percentile_ms(50):.2f}/{latency.percentile_ms(99):.2f} ms, "
        f"server cpu {cpu.get('cpu_pct', 0):.0f}%"
    )
    return result
