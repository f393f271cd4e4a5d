"""DynamoDB failures injected into the real client (dynoxide and moto, through each transport:
``lean`` and ``aioboto3``): throttling and 5xx before a call, and timeouts *after* a call
committed (the ambiguous case). Each injected failure is made by the transport's own translation
from what it would have met (an error document, a ``ClientError``, a timeout). Sends either
succeed or fail with a retriable error; nothing is ever half-written; retrying a failed send
stores it exactly once, with its original sequence if the failed attempt had in fact committed.
A refusal no retry can fix becomes a permanent domain error, never a transport exception."""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import time
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from messaging.domain.errors import MessagingError, Unavailable
from messaging.domain.ids import new_group_id, new_user_id
from messaging.domain.model import Chat, ChatKind, Membership
from messaging.durability.adapters.dynamodb_store import DynamoMessageStore, DynamoOutbox
from messaging.durability.config import DurabilityConfig
from messaging.durability.ingest import IngestService
from messaging.infra.dynamo_http import error_from_answer
from messaging.infra.dynamodb import (
    ClientKind,
    DynamoClient,
    DynamoError,
    Json,
    Retrier,
    from_client_error,
    open_dynamo,
    unanswered,
)
from messaging.infra.schema import ensure_tables
from tests.contract.stores import EMULATORS, TARGETS, endpoint_for, split_target

FAULTY = {"TransactWriteItems", "GetItem", "Query"}
DYNAMO_TARGETS = [t for t in TARGETS if t != "fake"]


def refusal(kind: str, operation: str, code: str, status: int) -> DynamoError:
    """The error ``kind``'s transport makes of a refusal ``code`` with HTTP ``status``."""
    if kind == "lean":
        document = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "injected"}
        return error_from_answer(status, orjson.dumps(document))
    return from_client_error(
        ClientError(
            {
                "Error": {"Code": code, "Message": "injected"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            operation,
        )
    )


def timeout(kind: str) -> DynamoError:
    """The error ``kind``'s transport makes of an answer that never came."""
    return unanswered(TimeoutError() if kind == "lean" else ReadTimeoutError(endpoint_url="x"))


class FlakyClient(DynamoClient):
    """Wraps a transport; chosen operations fail at random, before or after the real call."""

    def __init__(self, client: DynamoClient, kind: str, rng: random.Random, rate: float) -> None:
        self._client = client
        self._kind = kind
        self._rng = rng
        self.rate = rate
        self.refuse_with: tuple[str, int] | None = None
        self.failures: dict[str, int] = {"before": 0, "after": 0}

    async def call(self, operation: str, request: Json) -> Json:
        if operation not in FAULTY:
            return await self._client.call(operation, request)
        if self.refuse_with is not None and operation == "TransactWriteItems":
            raise refusal(self._kind, operation, *self.refuse_with)
        roll = self._rng.random()
        if roll < self.rate / 2:
            self.failures["before"] += 1
            code, status = self._rng.choice(
                [("ThrottlingException", 400), ("InternalServerError", 500)]
            )
            raise refusal(self._kind, operation, code, status)
        result = await self._client.call(operation, request)
        if roll < self.rate:
            self.failures["after"] += 1
            raise timeout(self._kind)
        return result


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


@pytest.mark.parametrize("target", DYNAMO_TARGETS)
async def test_injected_failures_never_half_write(target: str) -> None:
    rng = random.Random(7)
    prefix = f"f{uuid.uuid4().hex[:8]}-"
    emulator, kind = split_target(target)
    async with open_dynamo(endpoint_for(emulator), "us-east-1", client=kind) as client:
        await ensure_tables(client, prefix)
        clean = DynamoMessageStore(client, prefix, Retrier(10.0))
        flaky_client = FlakyClient(client, kind, rng, rate=0.4)
        flaky = DynamoMessageStore(
            flaky_client,
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


@pytest.mark.parametrize("target", [f"{EMULATORS[0]}-{kind}" for kind in ("lean", "aioboto3")])
async def test_a_store_that_is_down_gives_a_clear_retriable_error(target: str) -> None:
    prefix = f"f{uuid.uuid4().hex[:8]}-"
    emulator, kind = split_target(target)
    async with open_dynamo(endpoint_for(emulator), "us-east-1", client=kind) as client:
        await ensure_tables(client, prefix)
        clean = DynamoMessageStore(client, prefix, Retrier(10.0))
        alice = new_user_id()
        chat_id = await new_chat(clean, alice)
        down = FlakyClient(client, kind, random.Random(1), rate=2.0)  # every call fails before
        store = DynamoMessageStore(down, prefix, Retrier(0.3, base_delay=0.01))
        with pytest.raises(Unavailable, match="retry") as info:
            await IngestService(store, DurabilityConfig()).send(
                sender_id=alice, sender_device="d", chat_id=chat_id, client_message_id="x", text="x"
            )
        assert info.value.retriable
        assert info.value.code == "store_unavailable"
        assert await clean.read_messages(chat_id, 1, 10, limit=10) == []


@pytest.mark.parametrize("target", [f"{EMULATORS[0]}-{kind}" for kind in ("lean", "aioboto3")])
async def test_a_refusal_no_retry_can_fix_is_a_permanent_domain_error(target: str) -> None:
    """One odd send (say a ValidationException) is answered with an error frame: a permanent
    ``MessagingError``, not a transport exception that would close the socket."""
    prefix = f"f{uuid.uuid4().hex[:8]}-"
    emulator, kind = split_target(target)
    async with open_dynamo(endpoint_for(emulator), "us-east-1", client=kind) as client:
        await ensure_tables(client, prefix)
        clean = DynamoMessageStore(client, prefix, Retrier(10.0))
        alice = new_user_id()
        chat_id = await new_chat(clean, alice)
        odd = FlakyClient(client, kind, random.Random(1), rate=0.0)
        odd.refuse_with = ("ValidationException", 400)
        store = DynamoMessageStore(odd, prefix, Retrier(1.0, base_delay=0.01))
        with pytest.raises(MessagingError) as info:
            await IngestService(store, DurabilityConfig()).send(
                sender_id=alice, sender_device="d", chat_id=chat_id, client_message_id="x", text="x"
            )
        assert type(info.value) is MessagingError
        assert not info.value.retriable
        assert "ValidationException" in info.value.message
        assert isinstance(info.value.__cause__, DynamoError)
        assert await clean.read_messages(chat_id, 1, 10, limit=10) == []


@pytest.mark.parametrize("kind", ["lean", "aioboto3"])
async def test_an_unreachable_store_gives_a_clear_retriable_error(kind: ClientKind) -> None:
    """Connection refused, through the transport's real socket code: retried within the
    deadline, then the domain's retriable ``StoreUnavailable``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once the probe is closed
    async with open_dynamo(f"http://127.0.0.1:{port}", "us-east-1", client=kind) as client:
        store = DynamoMessageStore(client, "nowhere-", Retrier(0.3, base_delay=0.01))
        with pytest.raises(Unavailable, match="retry") as info:
            await store.get_chat("g_x")
        assert info.value.retriable
        assert info.value.code == "store_unavailable"
        assert isinstance(info.value.__cause__, DynamoError)


class PartitionMeter:
    """Proxies an aiobotocore client and bills each ``TransactWriteItems`` as AWS does: two
    write units per KB per written item, per partition key. With ``limit``, a call that would
    take any key past ``limit`` units in the current second is throttled before it is sent
    (``ThrottlingException``), as an AWS partition is at about 1,000 units/s (ADR 0024)."""

    def __init__(
        self, client: Any, kind: str, hash_keys: dict[str, str], limit: int | None = None
    ) -> None:
        self._client = client
        self._kind = kind
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
                raise refusal(self._kind, "TransactWriteItems", "ThrottlingException", 400)
            self._window.update(cost)
            self.units.update(cost)
            self.transactions += 1
            return await real(**kwargs)

        return metered


def metered_store(
    client: Any, kind: str, prefix: str, limit: int | None
) -> tuple[DynamoMessageStore, Any]:
    plain = DynamoMessageStore(client, prefix, Retrier(10.0))
    hash_keys = {
        plain.chats: "chat_id",
        plain.messages: "chat_id",
        plain.idempotency: "key",
        plain.outbox: "shard",
    }
    meter = PartitionMeter(client, kind, hash_keys, limit)
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


@pytest.mark.parametrize("target", [f"{e}-lean" for e in EMULATORS])
async def test_group_commit_bills_the_chat_item_per_transaction_not_per_message(
    target: str,
) -> None:
    prefix = f"f{uuid.uuid4().hex[:8]}-"
    emulator, kind = split_target(target)
    async with open_dynamo(endpoint_for(emulator), "us-east-1", client=kind) as client:
        await ensure_tables(client, prefix)
        store, meter = metered_store(client, kind, prefix, limit=None)
        users = [new_user_id() for _ in range(8)]
        chat_id = await new_chat(store, *users)
        # A generous deadline: each send is bounded by it from its call (ADR 0034), and this
        # test counts billing, not time, on an emulator that may be slow on a busy machine.
        ingest = IngestService(store, DurabilityConfig(append_deadline_seconds=30.0))
        assert await burst(ingest, users, chat_id, 48) == list(range(1, 49))
        # The messages all share the partition key chat_id: 2 units each, batched or not.
        assert meter.units[f"{store.messages}:{chat_id}"] == 2 * 48
        # The chat item is written once per transaction: fewer than once per message.
        assert meter.transactions < 48
        assert meter.units[f"{store.chats}:{chat_id}"] == 2 * meter.transactions


@pytest.mark.parametrize("target", [f"{EMULATORS[0]}-lean"])
async def test_an_emulated_partition_limit_throttles_a_hot_chat_and_loses_nothing(
    target: str,
) -> None:
    # 50 units/s per key, scaled down from AWS's 1,000: a batch of 24 messages (48 units on the
    # chat's messages partition) fits, 60 messages (120 units) need at least three seconds.
    prefix = f"f{uuid.uuid4().hex[:8]}-"
    emulator, kind = split_target(target)
    async with open_dynamo(endpoint_for(emulator), "us-east-1", client=kind) as client:
        await ensure_tables(client, prefix)
        store, meter = metered_store(client, kind, prefix, limit=50)
        users = [new_user_id() for _ in range(8)]
        chat_id = await new_chat(store, *users)
        ingest = IngestService(store, DurabilityConfig(append_deadline_seconds=30.0))
        assert await burst(ingest, users, chat_id, 60) == list(range(1, 61))
        # The hot key is the messages partition, not the chat item (ADR 0024).
        assert meter.throttled[f"{store.messages}:{chat_id}"] > 0
        stored = await store.read_messages(chat_id, 1, 100, limit=100)
        assert [m.sequence for m in stored] == list(range(1, 61))
