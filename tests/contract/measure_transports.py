"""CPU per DynamoDB call through each transport (ADR 0023), and print a markdown table.

    python -m tests.contract.measure_transports [--endpoint http://127.0.0.1:8001] [--calls 2000]

(the endpoint defaults to ``MESSAGING_TEST_DYNOXIDE_ENDPOINT``, else the stack's dynoxide). On
fresh tables from the project's schema, on one uvloop event loop, sequentially (one call in
flight, so the emulator's own time is not this process's CPU): ``time.process_time()`` over
``--calls`` consistent ``GetItem`` calls, then over as many sends' ``TransactWriteItems`` (the
5 items of one send, the bench baseline's exact request), per transport: ``lean``, ``aioboto3``,
and ``bare``, a POST over an aiohttp session with a constant ``Authorization`` header (the
emulator wants one but checks no signature) and nothing else: the floor, what any client must
spend on HTTP and JSON. A warm-up of 100 calls each is not counted.

Not a test (no ``test_`` prefix): it runs for tens of seconds and prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from typing import Any

import aiohttp
import orjson
import uvloop

from messaging.bench.baselines import _StoreOps
from messaging.bench.hist import Latency
from messaging.infra.dynamo_api import DynamoClient, Json
from messaging.infra.dynamodb import open_dynamo
from messaging.infra.schema import (
    CHAT_MEMBERSHIPS,
    CHATS,
    IDEMPOTENCY_KEYS,
    MESSAGES,
    OUTBOX,
    ensure_tables,
)

BARE_AUTHORIZATION = (
    "AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/dynamodb/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
)
TABLES = (CHATS, CHAT_MEMBERSHIPS, MESSAGES, OUTBOX, IDEMPOTENCY_KEYS)


class BareClient(DynamoClient):
    """A POST and orjson, nothing else: a constant (unverified) signature, no checks."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url

    async def call(self, operation: str, request: Json) -> Json:
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"DynamoDB_20120810.{operation}",
            "Authorization": BARE_AUTHORIZATION,
            "X-Amz-Date": "20260101T000000Z",
        }
        async with self._session.post(
            self._url, data=orjson.dumps(request), headers=headers
        ) as response:
            answer: Json = orjson.loads(await response.read())
            if response.status != 200:
                raise RuntimeError(f"{operation}: {answer}")
            return answer


async def cpu_per_call(client: DynamoClient, prefix: str, calls: int) -> dict[str, float]:
    ops = _StoreOps(client, prefix, f"g_m{uuid.uuid4().hex}", f"u_m{uuid.uuid4().hex}")
    await ops.setup()
    get_request: dict[str, Any] = {
        "TableName": ops.idempotency,
        "Key": {"key": {"S": "nothing-here"}},
        "ConsistentRead": True,
    }
    for _ in range(100):
        await client.get_item(**get_request)
        await ops.send("x" * 64, Latency(), Latency())
    began = time.process_time()
    for _ in range(calls):
        await client.get_item(**get_request)
    get_cpu = (time.process_time() - began) / calls
    # A send is a GetItem and the TransactWriteItems: the latter's CPU is the difference.
    began = time.process_time()
    for _ in range(calls):
        await ops.send("x" * 64, Latency(), Latency())
    send_cpu = (time.process_time() - began) / calls
    return {"get": get_cpu * 1e3, "send": send_cpu * 1e3, "tx": (send_cpu - get_cpu) * 1e3}


async def amain(args: argparse.Namespace) -> int:
    prefix = f"mt{uuid.uuid4().hex[:8]}-"
    rows: list[str] = []
    async with open_dynamo(args.endpoint, "us-east-1", client="aioboto3") as setup:
        await ensure_tables(setup, prefix, TABLES)
    try:
        for kind in ("bare", "lean", "aioboto3"):
            if kind == "bare":
                async with aiohttp.ClientSession() as session:
                    result = await cpu_per_call(
                        BareClient(session, args.endpoint.rstrip("/") + "/"), prefix, args.calls
                    )
            else:
                async with open_dynamo(args.endpoint, "us-east-1", client=kind) as client:  # type: ignore[arg-type]
                    result = await cpu_per_call(client, prefix, args.calls)
            rows.append(
                f"| {kind} | {result['get']:.3f} | {result['tx']:.3f} | {result['send']:.3f} |"
            )
            print(rows[-1], file=sys.stderr)
    finally:
        async with open_dynamo(args.endpoint, "us-east-1") as cleanup:
            for spec in TABLES:
                await cleanup.delete_table(TableName=f"{prefix}{spec.name}")
    print(f"CPU ms per call, {args.calls} sequential calls each, endpoint {args.endpoint}\n")
    print("| transport | GetItem | TransactWriteItems (5 items) | one send (both) |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--endpoint",
        default=os.environ.get("MESSAGING_TEST_DYNOXIDE_ENDPOINT", "http://127.0.0.1:8001"),
    )
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    return uvloop.run(amain(args))


if __name__ == "__main__":
    raise SystemExit(main())
