"""Building a ``MessageStore`` for each contract target: the fake, and each DynamoDB emulator
with fresh tables created by the project's own ``ensure_tables``."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from messaging.durability.adapters.dynamodb_store import DynamoMessageStore, DynamoOutbox
from messaging.durability.ports import MessageStore, Outbox
from messaging.infra.dynamodb import Retrier, open_client
from messaging.infra.schema import ensure_tables
from tests.fakes.durability import InMemoryMessageStore, InMemoryOutbox

TARGETS = ["fake", "dynoxide", "moto"]
ENDPOINT_ENV = {
    "dynoxide": "MESSAGING_TEST_DYNOXIDE_ENDPOINT",
    "moto": "MESSAGING_TEST_MOTO_ENDPOINT",
}


def endpoint_for(target: str) -> str:
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
    async with open_client(endpoint_for(target), "us-east-1") as client:
        await ensure_tables(client, prefix)
        retrier = Retrier(10.0)
        yield DynamoMessageStore(client, prefix, retrier), DynamoOutbox(client, prefix, retrier)
