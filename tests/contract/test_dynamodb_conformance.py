"""Conformance of the DynamoDB API emulators (dynoxide, moto) with real DynamoDB, for exactly the
operations and guarantees the project relies on:

* ``UpdateItem ADD`` as an atomic counter under concurrency (sequence allocation);
* conditional ``PutItem`` with ``attribute_not_exists`` (uniqueness: phone numbers, idempotency);
* ``TransactWriteItems``: all-or-nothing, ``CancellationReasons`` per item, isolation under
  concurrent racers, no effect of a cancelled transaction on other writes, and
  ``ReturnValuesOnConditionCheckFailure``;
* ``Query`` ranges on a numeric sort key in both directions with ``Limit`` pagination; GSI
  queries (a sparse index, and the project's ``chat_memberships.by_user``);
* TTL settings (``UpdateTimeToLive`` / ``DescribeTimeToLive``);
* ``GetItem`` with ``ConsistentRead`` seeing the preceding write;
* a few errors real DynamoDB raises that an emulator could silently accept (a bare reserved word
  in an expression, ``ConsistentRead`` on a GSI, enabling TTL twice), and the exact shape of
  ``ReturnValues=UPDATED_NEW``.

Each test runs once per target: dynoxide and moto at ``MESSAGING_TEST_DYNOXIDE_ENDPOINT`` /
``MESSAGING_TEST_MOTO_ENDPOINT`` (skipped when unset), and real AWS when ``MESSAGING_TEST_AWS=1``
(marker ``aws``). Tables are created from the project's own ``schema`` specs under a per-run
prefix and deleted at the end. A known emulator gap is listed in
``dynamodb_targets.KNOWN_GAPS`` and marked ``xfail(strict=True)`` for that target only.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from botocore.exceptions import ClientError

from messaging.infra.dynamodb import error_code, open_client
from messaging.infra.schema import (
    CHAT_MEMBERSHIPS,
    CHATS,
    IDEMPOTENCY_KEYS,
    MESSAGES,
    Index,
    TableSpec,
    table_name,
)
from tests.contract.dynamodb_targets import (
    KNOWN_GAPS,
    Target,
    bounded,
    create_tables,
    delete_tables,
    resolve_target,
    run_prefix,
)

# A sparse GSI: only items carrying ``outbox_shard`` are in the index. Test-local, so the suite
# does not depend on which project table has one at the moment.
SPARSE_INDEXED = TableSpec(
    "sparse_indexed",
    ("chat_id", "S"),
    ("sequence", "N"),
    indexes=(Index("outbox", ("outbox_shard", "S"), ("created_at_ms", "N")),),
)
SPECS = (CHATS, MESSAGES, IDEMPOTENCY_KEYS, CHAT_MEMBERSHIPS, SPARSE_INDEXED)

TARGETS = [
    pytest.param("dynoxide", id="dynoxide"),
    pytest.param("moto", id="moto"),
    pytest.param("aws", id="aws", marks=pytest.mark.aws),
]


def S(value: str) -> dict[str, str]:
    return {"S": value}


def N(value: int) -> dict[str, str]:
    return {"N": str(value)}


def uid() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Store:
    target: Target
    client: Any
    chats: str
    messages: str
    idempotency: str
    memberships: str
    sparse: str


@pytest.fixture(scope="module", params=TARGETS)
def target(request: pytest.FixtureRequest) -> Target:
    resolved = resolve_target(request.param)
    if isinstance(resolved, str):
        pytest.skip(resolved)
    return resolved


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def store(target: Target) -> AsyncIterator[Store]:
    prefix = run_prefix()
    # Real AWS answers slower than an emulator on 127.0.0.1; allow it.
    timeout = 30.0 if target.is_aws else 10.0
    async with open_client(target.endpoint, target.region, timeout_seconds=timeout) as client:
        try:
            names = await create_tables(client, prefix, SPECS)
            yield Store(
                target,
                client,
                chats=names[CHATS.name],
                messages=names[MESSAGES.name],
                idempotency=names[IDEMPOTENCY_KEYS.name],
                memberships=names[CHAT_MEMBERSHIPS.name],
                sparse=names[SPARSE_INDEXED.name],
            )
        finally:
            await delete_tables(client, [table_name(prefix, spec) for spec in SPECS])


class KnownGapObserved(AssertionError):
    """Raised by exactly the assertion a ``KNOWN_GAPS`` entry is about, so that the strict xfail
    it gets (``raises=KnownGapObserved``) cannot hide any other failure of the same test."""


def known_gap(request: pytest.FixtureRequest, target: Target, check: str) -> None:
    reason = KNOWN_GAPS.get((target.name, check))
    if reason:
        request.applymarker(
            pytest.mark.xfail(strict=True, raises=KnownGapObserved, reason=f"{check}: {reason}")
        )


async def get(store: Store, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
    response = await store.client.get_item(TableName=table, Key=key, ConsistentRead=True)
    item: dict[str, Any] | None = response.get("Item")
    return item


async def failure(call: Awaitable[Any]) -> ClientError | None:
    """The ClientError ``call`` raised, or None when it succeeded."""
    try:
        await call
    except ClientError as exc:
        return exc
    return None


def cancellation(exc: ClientError) -> list[dict[str, Any]]:
    assert error_code(exc) == "TransactionCanceledException", exc.response
    reasons = exc.response.get("CancellationReasons")
    assert reasons is not None, f"no CancellationReasons in {exc.response}"
    return list(reasons)


# --------------------------------------------------------------------------- atomic counter


async def test_add_counter_is_atomic_under_50_concurrent_clients(store: Store) -> None:
    key = {"chat_id": S(f"counter-{uid()}")}

    async def client_task() -> list[int]:
        seen = []
        for _ in range(20):
            response = await store.client.update_item(
                TableName=store.chats,
                Key=key,
                UpdateExpression="ADD #c :one",
                ExpressionAttributeNames={"#c": "counter"},
                ExpressionAttributeValues={":one": N(1)},
                ReturnValues="UPDATED_NEW",
            )
            seen.append(int(response["Attributes"]["counter"]["N"]))
        return seen

    results = await asyncio.gather(*(client_task() for _ in range(50)))
    returned = sorted(value for values in results for value in values)
    duplicates = len(returned) - len(set(returned))
    assert duplicates == 0, f"{duplicates} increments returned a value already returned"
    assert returned == list(range(1, 1001))
    for values in results:  # each client sees its own increments in increasing order
        assert values == sorted(values)
    item = await get(store, store.chats, key)
    assert item is not None
    assert item["counter"] == N(1000)


async def test_updated_new_returns_only_the_updated_attributes(
    request: pytest.FixtureRequest, store: Store
) -> None:
    """``ReturnValues=UPDATED_NEW`` returns the attributes the update wrote, never the key, also
    when the update creates the item."""
    known_gap(request, store.target, "updated-new-only-updated-attributes")
    key = {"chat_id": S(f"counter-{uid()}")}
    returned = []
    for _ in range(2):  # the first ADD creates the item, the second updates it
        response = await store.client.update_item(
            TableName=store.chats,
            Key=key,
            UpdateExpression="ADD #c :one",
            ExpressionAttributeNames={"#c": "counter"},
            ExpressionAttributeValues={":one": N(1)},
            ReturnValues="UPDATED_NEW",
        )
        returned.append(response["Attributes"])
    assert [attributes["counter"] for attributes in returned] == [N(1), N(2)]
    if any(set(attributes) != {"counter"} for attributes in returned):
        raise KnownGapObserved(f"UPDATED_NEW returned {returned}")


# --------------------------------------------------------------------------- conditional put


async def test_conditional_put_attribute_not_exists(store: Store) -> None:
    key = f"idem-{uid()}"

    async def put(owner: str) -> None:
        await store.client.put_item(
            TableName=store.idempotency,
            Item={"key": S(key), "owner": S(owner)},
            ConditionExpression="attribute_not_exists(#k)",
            ExpressionAttributeNames={"#k": "key"},
        )

    await put("first")
    with pytest.raises(ClientError) as caught:
        await put("second")
    assert error_code(caught.value) == "ConditionalCheckFailedException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "Item" not in caught.value.response  # only with ReturnValuesOnConditionCheckFailure
    assert await get(store, store.idempotency, {"key": S(key)}) == {
        "key": S(key),
        "owner": S("first"),
    }


async def test_conditional_put_race_has_exactly_one_winner(store: Store) -> None:
    for _round in range(5):
        key = f"race-{uid()}"

        async def racer(i: int, key: str = key) -> int | None:
            exc = await failure(
                store.client.put_item(
                    TableName=store.idempotency,
                    Item={"key": S(key), "owner": N(i)},
                    ConditionExpression="attribute_not_exists(#k)",
                    ExpressionAttributeNames={"#k": "key"},
                )
            )
            if exc is None:
                return i
            assert error_code(exc) == "ConditionalCheckFailedException", exc.response
            return None

        outcomes = await asyncio.gather(*(racer(i) for i in range(20)))
        winners = [i for i in outcomes if i is not None]
        assert len(winners) == 1, f"winners: {winners}"
        item = await get(store, store.idempotency, {"key": S(key)})
        assert item == {"key": S(key), "owner": N(winners[0])}


# --------------------------------------------------------------------------- transactions


def append_message(
    store: Store, chat: str, prev: int, author: str, idempotency_key: str
) -> list[dict[str, Any]]:
    """The project's append: advance the chat head, write the message, claim the idempotency key,
    all or nothing."""
    n = prev + 1
    return [
        {
            "Update": {
                "TableName": store.chats,
                "Key": {"chat_id": S(chat)},
                "UpdateExpression": "SET #h = :n",
                "ConditionExpression": "#h = :prev",
                "ExpressionAttributeNames": {"#h": "head"},
                "ExpressionAttributeValues": {":n": N(n), ":prev": N(prev)},
            }
        },
        {
            "Put": {
                "TableName": store.messages,
                "Item": {
                    "chat_id": S(chat),
                    "sequence": N(n),
                    "author": S(author),
                    "text": S(f"message {n} by {author}"),
                },
                "ConditionExpression": "attribute_not_exists(#pk)",
                "ExpressionAttributeNames": {"#pk": "chat_id"},
            }
        },
        {
            "Put": {
                "TableName": store.idempotency,
                "Item": {"key": S(idempotency_key), "chat_id": S(chat), "sequence": N(n)},
                "ConditionExpression": "attribute_not_exists(#k)",
                "ExpressionAttributeNames": {"#k": "key"},
            }
        },
    ]


async def new_chat(store: Store, head: int) -> str:
    chat = f"chat-{uid()}"
    await store.client.put_item(TableName=store.chats, Item={"chat_id": S(chat), "head": N(head)})
    return chat


async def test_transaction_success_writes_every_item(store: Store) -> None:
    chat = await new_chat(store, 0)
    idem = f"idem-{uid()}"
    await store.client.transact_write_items(
        TransactItems=append_message(store, chat, 0, "alice", idem)
    )
    assert await get(store, store.chats, {"chat_id": S(chat)}) == {
        "chat_id": S(chat),
        "head": N(1),
    }
    message = await get(store, store.messages, {"chat_id": S(chat), "sequence": N(1)})
    assert message is not None
    assert message["author"] == S("alice")
    assert await get(store, store.idempotency, {"key": S(idem)}) == {
        "key": S(idem),
        "chat_id": S(chat),
        "sequence": N(1),
    }


@pytest.mark.parametrize(
    "failing",
    [
        pytest.param(0, id="update-head-condition"),
        pytest.param(1, id="put-message-exists"),
        pytest.param(2, id="put-idempotency-key-exists"),
    ],
)
async def test_transaction_with_one_failed_condition_writes_nothing(
    store: Store, failing: int
) -> None:
    chat = await new_chat(store, 5)
    idem = f"idem-{uid()}"
    prev = 5
    existing_message = {
        "chat_id": S(chat),
        "sequence": N(6),
        "author": S("earlier"),
        "text": S("already here"),
    }
    existing_key = {"key": S(idem), "chat_id": S("another-chat"), "sequence": N(99)}
    if failing == 0:
        prev = 4  # the head is 5: a stale writer
    elif failing == 1:
        await store.client.put_item(TableName=store.messages, Item=existing_message)
    else:
        await store.client.put_item(TableName=store.idempotency, Item=existing_key)

    with pytest.raises(ClientError) as caught:
        await store.client.transact_write_items(
            TransactItems=append_message(store, chat, prev, "mallory", idem)
        )
    reasons = cancellation(caught.value)
    codes = [reason.get("Code") for reason in reasons]
    expected = ["None", "None", "None"]
    expected[failing] = "ConditionalCheckFailed"
    assert codes == expected, reasons
    assert "Item" not in reasons[failing]  # only with ReturnValuesOnConditionCheckFailure

    # Nothing of the transaction is visible; pre-existing items are untouched.
    assert await get(store, store.chats, {"chat_id": S(chat)}) == {
        "chat_id": S(chat),
        "head": N(5),
    }
    message = await get(store, store.messages, {"chat_id": S(chat), "sequence": N(prev + 1)})
    assert message == (existing_message if failing == 1 else None)
    key = await get(store, store.idempotency, {"key": S(idem)})
    assert key == (existing_key if failing == 2 else None)


async def transact_retrying_conflicts(store: Store, items: list[dict[str, Any]]) -> str:
    """Run a transaction; 'ok', or the cancellation code of its first item. Real DynamoDB may
    cancel a transaction that overlaps another in flight (``TransactionConflict``): that is not
    a decision, so it is retried, as the project does."""
    for _attempt in range(50):
        try:
            await store.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            codes = [reason.get("Code") for reason in cancellation(exc)]
            if "TransactionConflict" in codes:
                await asyncio.sleep(random.uniform(0, 0.05))
                continue
            assert codes[0] == "ConditionalCheckFailed", codes
            assert codes[2] == "None", codes  # every racer has its own idempotency key
            return "ConditionalCheckFailed"
        return "ok"
    raise AssertionError("50 transaction conflicts in a row")


async def test_concurrent_transactions_one_winner_per_round(store: Store) -> None:
    rounds, racers = 10, 20
    chat = await new_chat(store, 0)
    winners: list[int] = []
    for prev in range(rounds):
        outcomes = await asyncio.gather(
            *(
                transact_retrying_conflicts(
                    store, append_message(store, chat, prev, f"racer-{i}", f"{chat}-{prev}-{i}")
                )
                for i in range(racers)
            )
        )
        won = [i for i, outcome in enumerate(outcomes) if outcome == "ok"]
        assert len(won) == 1, f"round {prev}: winners {won}"
        winners.append(won[0])

    head = await get(store, store.chats, {"chat_id": S(chat)})
    assert head == {"chat_id": S(chat), "head": N(rounds)}
    for prev, winner in enumerate(winners):
        message = await get(store, store.messages, {"chat_id": S(chat), "sequence": N(prev + 1)})
        assert message is not None
        assert message["author"] == S(f"racer-{winner}")
    # All or nothing, per racer: exactly the winners' idempotency keys exist.
    claimed = await bounded(
        32,
        (
            get(store, store.idempotency, {"key": S(f"{chat}-{prev}-{i}")})
            for prev in range(rounds)
            for i in range(racers)
        ),
    )
    present = {
        (prev, i)
        for (prev, i), item in zip(
            ((p, i) for p in range(rounds) for i in range(racers)), claimed, strict=True
        )
        if item is not None
    }
    assert present == set(enumerate(winners))


async def test_concurrent_transactions_on_distinct_items_all_succeed(
    store: Store, ranged: RangeData
) -> None:
    """16 writers appending to 16 chats at once: every transaction commits, none errs.

    ``ranged`` only makes sure the tables hold a few hundred items, as real ones do: moto
    deep-copies every table a transaction touches, and with its threaded server a bigger copy
    means a wider window for "dictionary changed size during iteration" (HTTP 500)."""
    writers, appends = 16, 10
    chats = [await new_chat(store, 0) for _ in range(writers)]

    async def writer(chat: str) -> None:
        for prev in range(appends):
            items = append_message(store, chat, prev, "writer", f"{chat}-{prev}")
            assert await transact_retrying_conflicts(store, items) == "ok"

    await asyncio.gather(*(writer(chat) for chat in chats))
    heads = await asyncio.gather(*(get(store, store.chats, {"chat_id": S(c)}) for c in chats))
    assert heads == [{"chat_id": S(c), "head": N(appends)} for c in chats]


async def test_cancelled_transactions_do_not_undo_concurrent_writes(
    store: Store, ranged: RangeData
) -> None:
    """A cancelled transaction must leave every other write alone (moto rolls back by restoring
    a copy of each table taken when the transaction started; with its threaded server that wipes
    the writes made meanwhile). ``ranged``: see the test above."""
    stale_chat = await new_chat(store, 10)
    busy_chat = f"busy-{uid()}"

    async def failing_writer(w: int) -> None:
        for j in range(10):
            with pytest.raises(ClientError) as caught:
                await store.client.transact_write_items(
                    TransactItems=append_message(store, stale_chat, 3, "stale", f"stale-{w}-{j}")
                )
            codes = [reason.get("Code") for reason in cancellation(caught.value)]
            assert codes[0] in {"ConditionalCheckFailed", "TransactionConflict"}, codes

    async def plain_writer(w: int) -> None:
        for j in range(10):
            await store.client.put_item(
                TableName=store.messages,
                Item={"chat_id": S(busy_chat), "sequence": N(w * 10 + j), "author": S("w")},
            )

    await asyncio.gather(
        *(failing_writer(w) for w in range(10)), *(plain_writer(w) for w in range(10))
    )
    stored = await query_all(
        store,
        KeyConditionExpression="#pk = :p",
        ExpressionAttributeNames={"#pk": "chat_id"},
        ExpressionAttributeValues={":p": S(busy_chat)},
        ConsistentRead=True,
    )
    assert [int(item["sequence"]["N"]) for item in stored] == list(range(100))
    assert await get(store, store.chats, {"chat_id": S(stale_chat)}) == {
        "chat_id": S(stale_chat),
        "head": N(10),
    }


@pytest.mark.parametrize(
    "kind", ["transaction-condition-check", "transaction-put", "single-put-item"]
)
async def test_return_values_on_condition_check_failure(
    request: pytest.FixtureRequest, store: Store, kind: str
) -> None:
    check = f"return-values-on-condition-check-failure:{kind}"
    known_gap(request, store.target, check)
    chat = await new_chat(store, 7)
    chat_item = {"chat_id": S(chat), "head": N(7)}
    message = {"chat_id": S(chat), "sequence": N(8), "author": S("earlier")}
    await store.client.put_item(TableName=store.messages, Item=message)
    idem = f"idem-{uid()}"
    claim_key = {
        "Put": {
            "TableName": store.idempotency,
            "Item": {"key": S(idem)},
            "ConditionExpression": "attribute_not_exists(#k)",
            "ExpressionAttributeNames": {"#k": "key"},
        }
    }
    if kind == "single-put-item":
        with pytest.raises(ClientError) as caught:
            await store.client.put_item(
                TableName=store.messages,
                Item={**message, "author": S("later")},
                ConditionExpression="attribute_not_exists(#pk)",
                ExpressionAttributeNames={"#pk": "chat_id"},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        assert error_code(caught.value) == "ConditionalCheckFailedException"
        if "Item" not in caught.value.response:
            raise KnownGapObserved(f"{check}: no Item in {caught.value.response}")
        assert caught.value.response["Item"] == message
        assert await get(store, store.messages, {"chat_id": S(chat), "sequence": N(8)}) == message
        return

    if kind == "transaction-condition-check":
        first: dict[str, Any] = {
            "ConditionCheck": {
                "TableName": store.chats,
                "Key": {"chat_id": S(chat)},
                "ConditionExpression": "#h = :expected",
                "ExpressionAttributeNames": {"#h": "head"},
                "ExpressionAttributeValues": {":expected": N(6)},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
        old = chat_item
    else:
        first = {
            "Put": {
                "TableName": store.messages,
                "Item": {**message, "author": S("later")},
                "ConditionExpression": "attribute_not_exists(#pk)",
                "ExpressionAttributeNames": {"#pk": "chat_id"},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
        old = message
    with pytest.raises(ClientError) as caught:
        await store.client.transact_write_items(TransactItems=[first, claim_key])
    reasons = cancellation(caught.value)
    assert [reason.get("Code") for reason in reasons] == ["ConditionalCheckFailed", "None"]
    assert "Item" not in reasons[1]
    assert await get(store, store.idempotency, {"key": S(idem)}) is None
    assert await get(store, store.messages, {"chat_id": S(chat), "sequence": N(8)}) == message
    if "Item" not in reasons[0]:
        raise KnownGapObserved(f"{check}: no Item in {reasons[0]}")
    assert reasons[0]["Item"] == old


# --------------------------------------------------------------------------- queries


async def query_all(store: Store, table: str = "", **request: Any) -> list[dict[str, Any]]:
    """Query ``table`` (default: messages), following ``LastEvaluatedKey`` to the end; checks
    every page honours ``Limit``."""
    items: list[dict[str, Any]] = []
    limit = request.get("Limit")
    start: dict[str, Any] | None = None
    for _page in range(1000):
        page_request = dict(request, TableName=table or store.messages)
        if start is not None:
            page_request["ExclusiveStartKey"] = start
        page = await store.client.query(**page_request)
        if limit is not None:
            assert len(page["Items"]) <= limit
            assert page["Count"] == len(page["Items"])
        items.extend(page["Items"])
        start = page.get("LastEvaluatedKey")
        if start is None:
            return items
    raise AssertionError("no end of pagination after 1000 pages")


RANGE_ITEMS = 250


@dataclass(frozen=True)
class RangeData:
    chat: str
    shard: str


def outbox_member(sequence: int) -> bool:
    return sequence % 3 == 0


def created_at(sequence: int) -> int:
    # Decreasing in the sequence, so the index order differs from the table order.
    return 1_700_000_000_000 + (RANGE_ITEMS - sequence) * 1000


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ranged(store: Store) -> RangeData:
    data = RangeData(chat=f"range-{uid()}", shard=f"shard-{uid()}")

    def item(sequence: int, sparse: bool) -> dict[str, Any]:
        attributes = {
            "chat_id": S(data.chat),
            "sequence": N(sequence),
            "text": S(f"text {sequence}"),
        }
        if sparse and outbox_member(sequence):
            attributes["outbox_shard"] = S(data.shard)
            attributes["created_at_ms"] = N(created_at(sequence))
        return attributes

    # The same items in the messages table and in the table with the sparse index.
    await bounded(
        16,
        (
            store.client.put_item(TableName=table, Item=item(sequence, table == store.sparse))
            for table in (store.messages, store.sparse)
            for sequence in range(RANGE_ITEMS)
        ),
    )
    return data


@pytest.mark.parametrize("forward", [True, False], ids=["ascending", "descending"])
@pytest.mark.parametrize(
    ("condition", "bounds", "expected"),
    [
        pytest.param("#s BETWEEN :a AND :b", {":a": 37, ":b": 201}, range(37, 202), id="between"),
        pytest.param("#s > :a", {":a": 100}, range(101, RANGE_ITEMS), id="greater"),
        # 150 items: an exact multiple of the page size, so the last full page may carry a
        # LastEvaluatedKey that leads to an empty page (DynamoDB does that).
        pytest.param("#s < :b", {":b": 150}, range(0, 150), id="less"),
    ],
)
async def test_query_range_paginated(
    store: Store,
    ranged: RangeData,
    condition: str,
    bounds: dict[str, int],
    expected: range,
    forward: bool,
) -> None:
    items = await query_all(
        store,
        KeyConditionExpression=f"#pk = :p AND {condition}",
        ExpressionAttributeNames={"#pk": "chat_id", "#s": "sequence"},
        ExpressionAttributeValues={":p": S(ranged.chat), **{k: N(v) for k, v in bounds.items()}},
        ScanIndexForward=forward,
        Limit=30,
        ConsistentRead=True,
    )
    sequences = [int(item["sequence"]["N"]) for item in items]
    want = list(expected) if forward else list(reversed(expected))
    assert sequences == want
    assert all(item["text"] == S(f"text {int(item['sequence']['N'])}") for item in items)


async def outbox(store: Store, shard: str, **extra: Any) -> list[int]:
    items = await query_all(
        store,
        store.sparse,
        IndexName="outbox",
        KeyConditionExpression="#o = :shard",
        ExpressionAttributeNames={"#o": "outbox_shard"},
        ExpressionAttributeValues={":shard": S(shard)},
        Limit=30,
        **extra,
    )
    return [int(item["sequence"]["N"]) for item in items]


async def eventually(what: Any, expected: Any, seconds: float) -> None:
    """GSIs are eventually consistent on DynamoDB: poll (emulators answer at once)."""
    deadline = time.monotonic() + seconds
    while True:
        got = await what()
        if got == expected or time.monotonic() > deadline:
            assert got == expected
            return
        await asyncio.sleep(0.5)


async def test_sparse_gsi_query(store: Store, ranged: RangeData) -> None:
    members = [s for s in range(RANGE_ITEMS) if outbox_member(s)]
    # Ordered by the index's sort key (created_at_ms ascending = sequence descending).
    wait = 20.0 if store.target.is_aws else 0.0
    await eventually(lambda: outbox(store, ranged.shard), sorted(members, reverse=True), wait)
    await eventually(
        lambda: outbox(store, ranged.shard, ScanIndexForward=False), sorted(members), wait
    )

    # Publishing confirmed: REMOVE the attribute and the item leaves the index; set it on an
    # item that lacked it and it joins.
    removed = members[:5]
    await asyncio.gather(
        *(
            store.client.update_item(
                TableName=store.sparse,
                Key={"chat_id": S(ranged.chat), "sequence": N(s)},
                UpdateExpression="REMOVE #o, #t",
                ExpressionAttributeNames={"#o": "outbox_shard", "#t": "created_at_ms"},
            )
            for s in removed
        )
    )
    await store.client.update_item(
        TableName=store.sparse,
        Key={"chat_id": S(ranged.chat), "sequence": N(1)},
        UpdateExpression="SET #o = :shard, #t = :t",
        ExpressionAttributeNames={"#o": "outbox_shard", "#t": "created_at_ms"},
        ExpressionAttributeValues={":shard": S(ranged.shard), ":t": N(created_at(1))},
    )
    remaining = sorted([s for s in members if s not in removed] + [1], reverse=True)
    await eventually(lambda: outbox(store, ranged.shard), remaining, wait)
    # Other shards see nothing.
    assert await outbox(store, f"{ranged.shard}-other") == []


async def test_gsi_query_chat_memberships_by_user(store: Store) -> None:
    """The project's ``by_user`` index: a user's chats, in chat_id order, paginated."""
    user, other = f"user-{uid()}", f"user-{uid()}"
    chats = [f"chat-{i:02d}-{uid()}" for i in range(12)]
    await bounded(
        16,
        (
            store.client.put_item(
                TableName=store.memberships,
                Item={"chat_id": S(chat), "user_id": S(member), "role": S("member")},
            )
            for i, chat in enumerate(chats)
            for member in ((user, other) if i % 2 == 0 else (user,))
        ),
    )

    async def chats_of(member: str) -> list[str]:
        items = await query_all(
            store,
            store.memberships,
            IndexName="by_user",
            KeyConditionExpression="#u = :u",
            ExpressionAttributeNames={"#u": "user_id"},
            ExpressionAttributeValues={":u": S(member)},
            Limit=5,
        )
        assert all(item["role"] == S("member") for item in items)  # projection ALL
        return [item["chat_id"]["S"] for item in items]

    wait = 20.0 if store.target.is_aws else 0.0
    await eventually(lambda: chats_of(user), sorted(chats), wait)
    await eventually(lambda: chats_of(other), sorted(chats[::2]), wait)


async def test_gsi_rejects_consistent_read(
    request: pytest.FixtureRequest, store: Store, ranged: RangeData
) -> None:
    known_gap(request, store.target, "gsi-consistent-read-rejected")
    exc = await failure(outbox(store, ranged.shard, ConsistentRead=True))
    if exc is None:
        raise KnownGapObserved("a ConsistentRead Query on a GSI was accepted")
    assert error_code(exc) == "ValidationException", exc.response


# --------------------------------------------------------------------------- TTL


async def test_ttl_settings_round_trip(store: Store) -> None:
    """Only the settings and the attribute's type are asserted: real DynamoDB deletes expired
    items lazily (typically within days), and until then still returns them from reads."""
    table = store.idempotency
    described = await store.client.describe_time_to_live(TableName=table)
    assert described["TimeToLiveDescription"]["TimeToLiveStatus"] == "DISABLED"

    updated = await store.client.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
    )
    assert updated["TimeToLiveSpecification"] == {"Enabled": True, "AttributeName": "expires_at"}
    described = await store.client.describe_time_to_live(TableName=table)
    description = described["TimeToLiveDescription"]
    assert description["TimeToLiveStatus"] in {"ENABLED", "ENABLING"}
    assert description["AttributeName"] == "expires_at"

    now = int(time.time())
    past, future = f"ttl-past-{uid()}", f"ttl-future-{uid()}"
    for key, expires in ((past, now - 3600), (future, now + 3600)):
        await store.client.put_item(TableName=table, Item={"key": S(key), "expires_at": N(expires)})
    item = await get(store, table, {"key": S(future)})
    assert item == {"key": S(future), "expires_at": N(now + 3600)}
    item = await get(store, table, {"key": S(past)})
    # Expired: still readable until the background sweep deletes it, or already gone.
    assert item in (None, {"key": S(past), "expires_at": N(now - 3600)})


async def test_ttl_enable_twice_is_rejected(
    request: pytest.FixtureRequest, store: Store, target: Target
) -> None:
    """DynamoDB refuses to enable TTL on a table where it is already enabled (ValidationException
    "TimeToLive is already enabled"); ``schema.ensure_tables`` checks DescribeTimeToLive first."""
    known_gap(request, target, "ttl-enable-twice-rejected")
    async with open_client(target.endpoint, target.region) as client:
        prefix = run_prefix("ttl")
        try:
            names = await create_tables(client, prefix, (IDEMPOTENCY_KEYS,))
            name = names[IDEMPOTENCY_KEYS.name]
            spec = {"Enabled": True, "AttributeName": "expires_at"}
            await client.update_time_to_live(TableName=name, TimeToLiveSpecification=spec)
            exc = await failure(
                client.update_time_to_live(TableName=name, TimeToLiveSpecification=spec)
            )
            if exc is None:
                raise KnownGapObserved("enabling TTL a second time was accepted")
            assert error_code(exc) == "ValidationException", exc.response
        finally:
            await delete_tables(client, [table_name(prefix, IDEMPOTENCY_KEYS)])


# --------------------------------------------------------------------------- reads


async def test_consistent_read_sees_the_preceding_write(store: Store) -> None:
    async def writer_reader(w: int) -> None:
        key = {"chat_id": S(f"rw-{w}-{uid()}")}
        for i in range(10):
            await store.client.put_item(
                TableName=store.chats, Item={**key, "head": N(i), "writer": N(w)}
            )
            assert await get(store, store.chats, key) == {**key, "head": N(i), "writer": N(w)}
            await store.client.update_item(
                TableName=store.chats,
                Key=key,
                UpdateExpression="SET #h = #h + :one",
                ExpressionAttributeNames={"#h": "head"},
                ExpressionAttributeValues={":one": N(1)},
            )
            assert await get(store, store.chats, key) == {**key, "head": N(i + 1), "writer": N(w)}
        await store.client.delete_item(TableName=store.chats, Key=key)
        assert await get(store, store.chats, key) is None

    await asyncio.gather(*(writer_reader(w) for w in range(10)))


async def test_reserved_word_in_expression_is_rejected(
    request: pytest.FixtureRequest, store: Store
) -> None:
    """``key`` is a DynamoDB reserved word: used bare in an expression it is a
    ValidationException, which an emulator that accepts it would hide until production."""
    known_gap(request, store.target, "reserved-word-rejected")
    exc = await failure(
        store.client.put_item(
            TableName=store.idempotency,
            Item={"key": S(f"reserved-{uid()}")},
            ConditionExpression="attribute_not_exists(key)",
        )
    )
    if exc is None:
        raise KnownGapObserved("a bare reserved word in a ConditionExpression was accepted")
    assert error_code(exc) == "ValidationException", exc.response
