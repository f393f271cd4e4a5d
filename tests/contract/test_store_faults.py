"""DynamoDB failures injected into the real client (dynoxide and moto): throttling and 5xx
before a call, and timeouts *after* a call committed (the ambiguous case). Sends either succeed
or fail with a retriable error; nothing is ever half-written; retrying a failed send stores it
exactly once, with its original sequence if the failed attempt had in fact committed."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from messaging.domain.errors import Unavailable
from messaging.domain.ids import new_group_id, new_user_id
from messaging.domain.model import Chat, ChatKind, Membership
from messaging.durability.adapters.dynamodb_store import DynamoMessageStore, DynamoOutbox
from messaging.durability.config import DurabilityConfig
from messaging.durability.ingest import IngestService
from messaging.infra.dynamodb import Retrier, open_client
from messaging.infra.schema import ensure_tables
from tests.contract.stores import endpoint_for

FAULTY = {"transact_write_items", "get_item", "query"}


class FlakyClient:
    """Proxies an aiobotocore client; chosen operations fail at random, before or after."""

    def __init__(self, client: Any, rng: random.Random, rate: float) -> None:
        self._client = client
        self._rng = rng
        self.rate = rate
        self.failures: dict[str, int] = {"before": 0, "after": 0}

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name not in FAULTY:
            return real

        async def flaky(**kwargs: Any) -> Any:
            roll = self._rng.random()
            if roll < self.rate / 2:
                self.failures["before"] += 1
                code, status = self._rng.choice(
                    [("ThrottlingException", 400), ("InternalServerError", 500)]
                )
                raise ClientError(
                    {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                    name,
                )
            result = await real(**kwargs)
            if roll < self.rate:
                self.failures["after"] += 1
                raise ReadTimeoutError(endpoint_url="injected")
            return result

        return flaky


async def new_chat(store: DynamoMessageStore, *members: str) -> str:
    chat = Chat(
        chat_id=new_group_id(),
        kind=ChatKind.GROUP,
        title="t",
        created_by=members[0],
        created_at_ms=0,
    )
    await store.create_chat(
        chat, [Membership(chat_id=chat.chat_id, user_id=m, joined_seq=0) for m in members]
    )
    return chat.chat_id


@pytest.mark.parametrize("target", ["dynoxide", "moto"])
async def test_injected_failures_never_half_write(target: str) -> None:
    rng = random.Random(7)
    prefix = f"f{uuid.uuid4().hex[:8]}-"
    async with open_client(endpoint_for(target), "us-east-1") as client:
        await ensure_tables(client, prefix)
        clean = DynamoMessageStore(client, prefix, Retrier(10.0))
        flaky_client = FlakyClient(client, rng, rate=0.4)
        flaky = DynamoMessageStore(
            flaky_client,  # type: ignore[arg-type]
            prefix,
            # No time for retries: every injected failure reaches the caller, whatever the
            # machine's load (the retry loop itself is covered by tests/unit/test_retrier.py).
            Retrier(0.001, base_delay=0.01, max_delay=0.05, rng=rng),
        )
        users = [new_user_id() for _ in range(3)]
        chats = [await new_chat(clean, *users) for _ in range(2)]
        config = DurabilityConfig(append_deadline_seconds=1.0)
        faulty_ingest = IngestService(flaky, config)
        clean_ingest = IngestService(clean, config)
        outcomes: dict[tuple[str, str, str], int | None] = {}

        async def one(sender: str, chat_id: str, cmid: str) -> None:
            try:
                result = await faulty_ingest.send(
                    sender_id=sender,
                    sender_device="d",
                    chat_id=chat_id,
                    client_message_id=cmid,
                    text=cmid,
                )
                outcomes[(sender, chat_id, cmid)] = result.message.sequence
            except Unavailable as exc:
                outcomes[(sender, chat_id, cmid)] = None if exc.retriable else -1

        await asyncio.gather(*(one(users[i % 3], chats[i % 2], f"k{i}") for i in range(40)))
        assert flaky_client.failures["before"] > 0
        assert flaky_client.failures["after"] > 0
        assert -1 not in outcomes.values(), "every failure is retriable"
        failed = [key for key, seq in outcomes.items() if seq is None]
        assert failed, "the injected failures should fail some sends"

        # Retry every failed send on a healthy path: each resolves exactly once.
        for sender, chat_id, cmid in failed:
            result = await clean_ingest.send(
                sender_id=sender,
                sender_device="d",
                chat_id=chat_id,
                client_message_id=cmid,
                text=cmid,
            )
            outcomes[(sender, chat_id, cmid)] = result.message.sequence

        outbox = DynamoOutbox(client, prefix, Retrier(10.0))
        entries = await outbox.pending(2**42, 1000)
        for chat_id in chats:
            chat = await clean.get_chat(chat_id)
            assert chat is not None
            stored = await clean.read_messages(chat_id, 1, 1000, limit=1000)
            assert [m.sequence for m in stored] == list(range(1, chat.head + 1))
            expected = {cmid: seq for (_, c, cmid), seq in outcomes.items() if c == chat_id}
            assert {m.client_message_id: m.sequence for m in stored} == expected
            assert sorted(e.sequence for e in entries if e.chat_id == chat_id) == list(
                range(1, chat.head + 1)
            ), "every message has its outbox entry, and only messages have one"


@pytest.mark.parametrize("target", ["dynoxide"])
async def test_a_store_that_is_down_gives_a_clear_retriable_error(target: str) -> None:
    prefix = f"f{uuid.uuid4().hex[:8]}-"
    async with open_client(endpoint_for(target), "us-east-1") as client:
        await ensure_tables(client, prefix)
        clean = DynamoMessageStore(client, prefix, Retrier(10.0))
        alice = new_user_id()
        chat_id = await new_chat(clean, alice)
        down = FlakyClient(client, random.Random(1), rate=2.0)  # every call fails before
        store = DynamoMessageStore(down, prefix, Retrier(0.3, base_delay=0.01))  # type: ignore[arg-type]
        with pytest.raises(Unavailable, match="retry") as info:
            await IngestService(store, DurabilityConfig()).send(
                sender_id=alice, sender_device="d", chat_id=chat_id, client_message_id="x", text="x"
            )
        assert info.value.retriable
        assert info.value.code == "store_unavailable"
        assert await clean.read_messages(chat_id, 1, 10, limit=10) == []


class PartitionMeter:
    """Proxies an aiobotocore client and bills each ``TransactWriteItems`` as AWS does: two
    write units per KB per written item, per partition key. With ``limit``, a call that would
    take any key past ``limit`` units in the current second is throttled before it is sent
    (``ThrottlingException``), as an AWS partition is at about 1,000 units/s (ADR 0024)."""

    def __init__(self, client: Any, hash_keys: dict[str, str], limit: int | None = None) -> None:
        self._client = client
        self._hash_keys = hash_keys
        self.limit = limit
        self.units: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self.transactions = 0
        self._second = -1
        self._window: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name != "transact_write_items":
            return real

        async def metered(**kwargs: Any) -> Any:
            cost: Counter[str] = Counter()
            for action in kwargs["TransactItems"]:
                ((kind, body),) = action.items()
                if kind == "ConditionCheck":  # read units, not write units
                    continue
                item = body.get("Item") or body["Key"]
                table = body["TableName"]
                partition = f"{table}:{item[self._hash_keys[table]]['S']}"
                cost[partition] += 2 * max(1, math.ceil(len(json.dumps(item)) / 1024))
            second = int(time.monotonic())
            if second != self._second:
                self._second, self._window = second, Counter()
            over = [k for k, c in cost.items() if self.limit and self._window[k] + c > self.limit]
            if over:
                self.throttled.update(over)
                raise ClientError(
                    {
                        "Error": {"Code": "ThrottlingException"},
                        "ResponseMetadata": {"HTTPStatusCode": 400},
                    },
                    name,
                )
            self._window.update(cost)
            self.units.update(cost)
            self.transactions += 1
            return await real(**kwargs)

        return metered


def metered_store(client: Any, prefix: str, limit: int | None) -> tuple[DynamoMessageStore, Any]:
    plain = DynamoMessageStore(client, prefix, Retrier(10.0))
    hash_keys = {
        plain.chats: "chat_id",
        plain.messages: "chat_id",
        plain.idempotency: "key",
        plain.outbox: "shard",
    }
    meter = PartitionMeter(client, hash_keys, limit)
    return DynamoMessageStore(meter, prefix, Retrier(10.0)), meter  # type: ignore[arg-type]


async def burst(ingest: IngestService, users: list[str], chat_id: str, count: int) -> list[int]:
    results = await asyncio.gather(
        *(
            ingest.send(
                sender_id=users[i % len(users)],
                sender_device="d",
                chat_id=chat_id,
                client_message_id=f"k{i}",
                text="x" * 200,
            )
            for i in range(count)
        )
    )
    return sorted(r.message.sequence for r in results)


@pytest.mark.parametrize("target", ["dynoxide", "moto"])
async def test_group_commit_bills_the_chat_item_per_transaction_not_per_message(
    target: str,
) -> None:
    prefix = f"f{uuid.uuid4().hex[:8]}-"
    async with open_client(endpoint_for(target), "us-east-1") as client:
        await ensure_tables(client, prefix)
        store, meter = metered_store(client, prefix, limit=None)
        users = [new_user_id() for _ in range(8)]
        chat_id = await new_chat(store, *users)
        assert await burst(IngestService(store, DurabilityConfig()), users, chat_id, 48) == list(
            range(1, 49)
        )
        # The messages all share the partition key chat_id: 2 units each, batched or not.
        assert meter.units[f"{store.messages}:{chat_id}"] == 2 * 48
        # The chat item is written once per transaction: fewer than once per message.
        assert meter.transactions < 48
        assert meter.units[f"{store.chats}:{chat_id}"] == 2 * meter.transactions


@pytest.mark.parametrize("target", ["dynoxide"])
async def test_an_emulated_partition_limit_throttles_a_hot_chat_and_loses_nothing(
    target: str,
) -> None:
    # 50 units/s per key, scaled down from AWS's 1,000: a batch of 24 messages (48 units on the
    # chat's messages partition) fits, 60 messages (120 units) need at least three seconds.
    prefix = f"f{uuid.uuid4().hex[:8]}-"
    async with open_client(endpoint_for(target), "us-east-1") as client:
        await ensure_tables(client, prefix)
        store, meter = metered_store(client, prefix, limit=50)
        users = [new_user_id() for _ in range(8)]
        chat_id = await new_chat(store, *users)
        ingest = IngestService(store, DurabilityConfig(append_deadline_seconds=10.0))
        assert await burst(ingest, users, chat_id, 60) == list(range(1, 61))
        # The hot key is the messages partition, not the chat item (ADR 0024).
        assert meter.throttled[f"{store.messages}:{chat_id}"] > 0
        stored = await store.read_messages(chat_id, 1, 100, limit=100)
        assert [m.sequence for m in stored] == list(range(1, 61))
