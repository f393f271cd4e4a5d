"""Building a ``MessageStore`` for each contract target: the fake, and each DynamoDB emulator
through each transport (``lean`` and the reference ``aioboto3``, ADR 0023) with fresh tables
created by the project's own ``ensure_tables``. A target is ``<emulator>-<transport>``."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from messaging.durability.adapters.dynamodb_store import DynamoMessageStore, DynamoOutbox
from messaging.durability.ports import MessageStore, Outbox
from messaging.infra.dynamodb import CLIENT_KINDS, ClientKind, Retrier, open_dynamo
from messaging.infra.schema import ensure_tables
from tests.fakes.durability import InMemoryMessageStore, InMemoryOutbox

EMULATORS = ["dynoxide", "moto"]
TARGETS = ["fake", *(f"{e}-{kind}" for e in EMULATORS for kind in CLIENT_KINDS)]
ENDPOINT_ENV = {
    "dynoxide": "MESSAGING_TEST_DYNOXIDE_ENDPOINT",
    "moto": "MESSAGING_TEST_MOTO_ENDPOINT",
}


def split_target(target: str) -> tuple[str, ClientKind]:
    """``"moto-lean"`` -> ``("moto", "lean")``."""
    emulator, _, kind = target.partition("-")
    assert kind in CLIENT_KINDS, target
    return emulator, kind  # type: ignore[return-value]


def endpoint_for(target: str) -> str:
    """The endpoint of an emulator (``"dynoxide"``) or of a target (``"dynoxide-lean"``)."""
    target = target.partition("-")[0]
    endpoint = os.environ.get(ENDPOINT_ENV[target], "")
    if not endpoint:
        pytest.fail(f"{ENDPOINT_ENV[target]} is not set: tests/conftest.py starts the emulators")
    return endpoint


@asynccontextmanager
async def open_store(target: str) -> AsyncIterator[MessageStore]:
    async with open_store_and_outbox(target) as (store, _):
        yield store


@asynccontextmanager
async def open_store_and_outbox(target: str) -> AsyncIterator[tuple[MessageStore, Outbox]]:
    if target == "fake":
        store = InMemoryMessageStore()
        yield store, InMemoryOutbox(store)
        return
    prefix = f"c{uuid.uuid4().hex[:8]}-"
    emulator, kind = split_target(target)
    async with open_dynamo(endpoint_for(emulator), "us-east-1", client=kind) as client:
        await ensure_tables(client, prefix)
        retrier = Retrier(10.0)
        yield DynamoMessageStore(client, prefix, retrier), DynamoOutbox(client, prefix, retrier)
