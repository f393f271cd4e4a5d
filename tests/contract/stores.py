"""Building a ``MessageStore`` for each contract target: the fake, and each DynamoDB emulator
with fresh tables created by the project's own ``ensure_tables``."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from messaging.durability.adapters.dynamodb_store import DynamoMessageStore
from messaging.durability.ports import MessageStore
from messaging.infra.dynamodb import Retrier, open_client
from messaging.infra.schema import ensure_tables
from tests.fakes.durability import InMemoryMessageStore

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
    if target == "fake":
        yield InMemoryMessageStore()
        return
    prefix = f"c{uuid.uuid4().hex[:8]}-"
    async with open_client(endpoint_for(target), "us-east-1") as client:
        await ensure_tables(client, prefix)
        yield DynamoMessageStore(client, prefix, Retrier(10.0))
