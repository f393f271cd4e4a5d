"""Where the DynamoDB conformance suite (and ``measure_emulators.py``) runs, and table helpers.

Targets: each local emulator at the endpoint its environment variable names (``make test`` starts
both and sets them), and real AWS DynamoDB when ``MESSAGING_TEST_AWS=1`` (default credential
chain, region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else us-east-1).

Not collected by pytest (no ``test_`` prefix); imported by the test module and the script.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from messaging.infra.dynamodb import error_code
from messaging.infra.schema import TableSpec, create_table_request, table_name

T = TypeVar("T")

EMULATOR_ENV = {
    "dynoxide": "MESSAGING_TEST_DYNOXIDE_ENDPOINT",
    "moto": "MESSAGING_TEST_MOTO_ENDPOINT",
}
AWS_ENV = "MESSAGING_TEST_AWS"
EMULATOR_REGION = "us-east-1"

# Checks an emulator is known to fail, as (target, check) -> why. The suite marks exactly these
# xfail(strict=True) for that target only: when an emulator gains the feature, the strict xfail
# turns into a failure and the entry must be removed.
KNOWN_GAPS: dict[tuple[str, str], str] = {
    ("moto", "updated-new-only-updated-attributes"): (
        "moto 5.2.5 adds the key attributes to ReturnValues=UPDATED_NEW when the UpdateItem "
        "creates the item (DynamoDB returns only the updated attributes)"
    ),
    ("moto", "ttl-enable-twice-rejected"): (
        "moto 5.2.5 accepts UpdateTimeToLive Enabled=true on a table whose TTL is already "
        "enabled; DynamoDB answers ValidationException 'TimeToLive is already enabled'"
    ),
    ("dynoxide", "ttl-enable-twice-rejected"): (
        "dynoxide (crate dynoxide-rs 3.2.0; the binary says 1.5.0) accepts "
        "UpdateTimeToLive Enabled=true on a table whose TTL is already "
        "enabled; DynamoDB answers ValidationException 'TimeToLive is already enabled'"
    ),
}


@dataclass(frozen=True)
class Target:
    name: str
    endpoint: str  # "" means real AWS
    region: str

    @property
    def is_aws(self) -> bool:
        return not self.endpoint


def resolve_target(name: str) -> Target | str:
    """The target called ``name``, or the reason it is not available (to skip with)."""
    if name == "aws":
        if os.environ.get(AWS_ENV) != "1":
            return f"real AWS DynamoDB: set {AWS_ENV}=1 (and AWS credentials) to run against it"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
        return Target("aws", "", region or "us-east-1")
    variable = EMULATOR_ENV[name]
    endpoint = os.environ.get(variable, "").strip()
    if not endpoint:
        return (
            f"{name}: {variable} is not set (`make test` starts the emulator and sets it; or "
            f"start one yourself and export {variable}=http://127.0.0.1:PORT)"
        )
    return Target(name, endpoint, EMULATOR_REGION)


def run_prefix(tag: str = "conf") -> str:
    """A table-name prefix unique to this run, so runs never see each other's tables."""
    return f"{tag}-{uuid.uuid4().hex[:10]}-"


async def create_tables(
    client: Any, prefix: str, specs: Sequence[TableSpec], *, wait_seconds: float = 180.0
) -> dict[str, str]:
    """Create the tables (the project's own request shape) and wait until they and their indexes
    are ACTIVE. Returns spec name -> table name."""
    names = {spec.name: table_name(prefix, spec) for spec in specs}
    await asyncio.gather(
        *(client.create_table(**create_table_request(prefix, spec)) for spec in specs)
    )
    await asyncio.gather(*(wait_active(client, name, wait_seconds) for name in names.values()))
    return names


async def wait_active(client: Any, name: str, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        table = (await client.describe_table(TableName=name))["Table"]
        indexes = table.get("GlobalSecondaryIndexes", [])
        if table.get("TableStatus") == "ACTIVE" and all(
            gsi.get("IndexStatus", "ACTIVE") == "ACTIVE" for gsi in indexes
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"table {name} not ACTIVE after {wait_seconds:g}s")
        await asyncio.sleep(1.0)


async def delete_tables(client: Any, names: Iterable[str]) -> None:
    async def delete(name: str) -> None:
        try:
            await client.delete_table(TableName=name)
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise

    await asyncio.gather(*(delete(name) for name in names))


async def bounded(limit: int, jobs: Iterable[Awaitable[T]]) -> list[T]:
    """Await ``jobs`` with at most ``limit`` in flight; results in input order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        async with semaphore:
            return await job

    return await asyncio.gather(*(one(job) for job in jobs))
