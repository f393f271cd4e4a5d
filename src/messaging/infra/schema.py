"""Table definitions and their idempotent bootstrap (``messaging db init``).

The same code creates the tables on a local emulator and on AWS. The access patterns behind each
key and index are in ``docs/adr/0004-dynamodb-data-model.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from messaging.infra.dynamodb import DynamoClient, DynamoError


@attrs.frozen
class Index:
    name: str
    hash_key: tuple[str, str]
    range_key: tuple[str, str] | None = None


@attrs.frozen
class TableSpec:
    name: str
    hash_key: tuple[str, str]
    range_key: tuple[str, str] | None = None
    indexes: tuple[Index, ...] = ()
    ttl_attribute: str | None = None


USERS = TableSpec("users", ("user_id", "S"))
PHONE_NUMBERS = TableSpec("phone_numbers", ("phone", "S"))
DEVICES = TableSpec("devices", ("user_id", "S"), ("device_id", "S"))
CHATS = TableSpec("chats", ("chat_id", "S"))
CHAT_MEMBERSHIPS = TableSpec(
    "chat_memberships",
    ("chat_id", "S"),
    ("user_id", "S"),
    indexes=(Index("by_user", ("user_id", "S"), ("chat_id", "S")),),
)
MESSAGES = TableSpec("messages", ("chat_id", "S"), ("sequence", "N"))
# One entry per message whose Kafka publish is not yet confirmed (ADR 0006). ``entry`` sorts by
# creation time: "<created_at_ms:013d>#<chat_id>#<sequence:012d>".
OUTBOX = TableSpec("outbox", ("shard", "S"), ("entry", "S"))
DELIVERY_STATE = TableSpec("delivery_state", ("user_id", "S"), ("chat_id", "S"))
IDEMPOTENCY_KEYS = TableSpec("idempotency_keys", ("key", "S"), ttl_attribute="expires_at")

ALL_TABLES: tuple[TableSpec, ...] = (
    USERS,
    PHONE_NUMBERS,
    DEVICES,
    CHATS,
    CHAT_MEMBERSHIPS,
    MESSAGES,
    OUTBOX,
    DELIVERY_STATE,
    IDEMPOTENCY_KEYS,
)


def table_name(prefix: str, spec: TableSpec) -> str:
    return f"{prefix}{spec.name}"


def _key_schema(hash_key: tuple[str, str], range_key: tuple[str, str] | None) -> list[Any]:
    schema = [{"AttributeName": hash_key[0], "KeyType": "HASH"}]
    if range_key:
        schema.append({"AttributeName": range_key[0], "KeyType": "RANGE"})
    return schema


def create_table_request(prefix: str, spec: TableSpec) -> dict[str, Any]:
    attributes: dict[str, str] = {}
    for key in (spec.hash_key, spec.range_key):
        if key:
            attributes[key[0]] = key[1]
    for index in spec.indexes:
        for key in (index.hash_key, index.range_key):
            if key:
                attributes[key[0]] = key[1]
    request: dict[str, Any] = {
        "TableName": table_name(prefix, spec),
        "KeySchema": _key_schema(spec.hash_key, spec.range_key),
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": kind} for name, kind in attributes.items()
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if spec.indexes:
        request["GlobalSecondaryIndexes"] = [
            {
                "IndexName": index.name,
                "KeySchema": _key_schema(index.hash_key, index.range_key),
                "Projection": {"ProjectionType": "ALL"},
            }
            for index in spec.indexes
        ]
    return request


async def ensure_tables(
    client: DynamoClient,
    prefix: str,
    tables: Sequence[TableSpec] = ALL_TABLES,
    *,
    progress: Callable[[str], None] = lambda _line: None,
    wait_seconds: float = 120.0,
) -> list[str]:
    """Create every missing table, wait until all are ACTIVE, switch TTL on. Returns the names
    of the tables it created (empty when everything existed: the call is idempotent)."""
    created: list[str] = []
    for spec in tables:
        name = table_name(prefix, spec)
        try:
            await client.create_table(**create_table_request(prefix, spec))
            created.append(name)
            progress(f"created table {name}")
        except DynamoError as exc:
            if exc.code != "ResourceInUseException":
                raise
            progress(f"table {name} exists")
    for spec in tables:
        name = table_name(prefix, spec)
        await _wait_active(client, name, wait_seconds)
        if spec.ttl_attribute:
            await _ensure_ttl(client, name, spec.ttl_attribute)
    return created


async def _wait_active(client: DynamoClient, name: str, wait_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        described = await client.describe_table(TableName=name)
        table = described["Table"]
        indexes_active = all(
            gsi.get("IndexStatus", "ACTIVE") == "ACTIVE"
            for gsi in table.get("GlobalSecondaryIndexes", [])
        )
        if table.get("TableStatus") == "ACTIVE" and indexes_active:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"table {name} not ACTIVE after {wait_seconds:g}s")
        await asyncio.sleep(0.5)


async def _ensure_ttl(client: DynamoClient, name: str, attribute: str) -> None:
    described = await client.describe_time_to_live(TableName=name)
    status = described.get("TimeToLiveDescription", {})
    if status.get("TimeToLiveStatus") in {"ENABLED", "ENABLING"}:
        return
    await client.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute}
    )
