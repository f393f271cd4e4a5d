"""Measure the DynamoDB API emulators on the project's hot paths and print a markdown table.

    python -m tests.contract.measure_emulators \\
        --dynoxide http://127.0.0.1:18001 --moto http://127.0.0.1:18002

(endpoints default to ``MESSAGING_TEST_DYNOXIDE_ENDPOINT`` / ``MESSAGING_TEST_MOTO_ENDPOINT``;
a target without an endpoint is left out). Per emulator, on fresh tables from the project's
schema:

* the message append, a 3-item ``TransactWriteItems`` (1 Update of the chat head + 2 conditional
  Puts): p50/p99 latency at concurrency 1, then p50/p99 and ops/s at concurrency 16 over 2000
  transactions (each worker appends to its own chat, so no transaction is cancelled);
* ``Query`` with ``Limit=100`` on one partition holding 5,000 items (random start, both
  directions): p50/p99;
* the concurrency-1 append again once the tables hold those 5,000+ items (moto copies every table
  a transaction touches, so its transactions slow down as tables grow).

Not a test (no ``test_`` prefix): it runs for tens of seconds and prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from messaging.infra.dynamodb import open_client
from messaging.infra.schema import CHATS, IDEMPOTENCY_KEYS, MESSAGES
from tests.contract.dynamodb_targets import (
    EMULATOR_ENV,
    EMULATOR_REGION,
    bounded,
    create_tables,
    delete_tables,
    run_prefix,
)

SPECS = (CHATS, MESSAGES, IDEMPOTENCY_KEYS)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class Appender:
    """Appends messages to one chat with the project's 3-item transaction."""

    def __init__(self, client: Any, names: dict[str, str], chat: str) -> None:
        self.client = client
        self.names = names
        self.chat = chat
        self.head = 0

    async def create(self) -> None:
        await self.client.put_item(
            TableName=self.names[CHATS.name], Item={"chat_id": {"S": self.chat}, "head": {"N": "0"}}
        )

    async def append(self) -> float:
        n = self.head + 1
        started = time.perf_counter()
        await self.client.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": self.names[CHATS.name],
                        "Key": {"chat_id": {"S": self.chat}},
                        "UpdateExpression": "SET #h = :n",
                        "ConditionExpression": "#h = :prev",
                        "ExpressionAttributeNames": {"#h": "head"},
                        "ExpressionAttributeValues": {
                            ":n": {"N": str(n)},
                            ":prev": {"N": str(n - 1)},
                        },
                    }
                },
                {
                    "Put": {
                        "TableName": self.names[MESSAGES.name],
                        "Item": {
                            "chat_id": {"S": self.chat},
                            "sequence": {"N": str(n)},
                            "text": {"S": f"message {n} " + "x" * 100},
                        },
                        "ConditionExpression": "attribute_not_exists(#pk)",
                        "ExpressionAttributeNames": {"#pk": "chat_id"},
                    }
                },
                {
                    "Put": {
                        "TableName": self.names[IDEMPOTENCY_KEYS.name],
                        "Item": {
                            "key": {"S": f"{self.chat}-{n}"},
                            "sequence": {"N": str(n)},
                            "expires_at": {"N": str(int(time.time()) + 86400)},
                        },
                        "ConditionExpression": "attribute_not_exists(#k)",
                        "ExpressionAttributeNames": {"#k": "key"},
                    }
                },
            ]
        )
        elapsed = time.perf_counter() - started
        self.head = n
        return elapsed


async def timed(operation: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await operation()
    return time.perf_counter() - started


async def measure(name: str, endpoint: str, args: argparse.Namespace) -> dict[str, str]:
    def say(line: str) -> None:
        print(f"[{name}] {line}", file=sys.stderr, flush=True)

    results: dict[str, str] = {}
    prefix = run_prefix("measure")
    async with open_client(endpoint, EMULATOR_REGION, timeout_seconds=60.0) as client:
        try:
            names = await create_tables(client, prefix, SPECS)

            # Concurrency 1.
            single = Appender(client, names, "chat-single")
            await single.create()
            for _ in range(20):  # warm-up
                await single.append()
            latencies = [await single.append() for _ in range(args.sequential)]
            results["txn c=1 p50"] = ms(percentile(latencies, 50))
            results["txn c=1 p99"] = ms(percentile(latencies, 99))
            say(f"c=1: {len(latencies)} transactions")

            # Concurrency 16, each worker on its own chat.
            workers = [Appender(client, names, f"chat-{w}") for w in range(args.concurrency)]
            await asyncio.gather(*(w.create() for w in workers))
            per_worker = args.transactions // args.concurrency
            latencies = []

            async def run(worker: Appender) -> None:
                for _ in range(per_worker):
                    latencies.append(await worker.append())

            started = time.perf_counter()
            await asyncio.gather(*(run(w) for w in workers))
            wall = time.perf_counter() - started
            c = args.concurrency
            results[f"txn c={c} p50"] = ms(percentile(latencies, 50))
            results[f"txn c={c} p99"] = ms(percentile(latencies, 99))
            results[f"txn c={c} ops/s"] = f"{len(latencies) / wall:.0f}"
            say(f"c={c}: {len(latencies)} transactions in {wall:.1f}s")

            # A partition with many items, loaded with plain PutItem at concurrency 16.
            chat = "chat-big"
            table = names[MESSAGES.name]
            started = time.perf_counter()
            await bounded(
                16,
                (
                    client.put_item(
                        TableName=table,
                        Item={
                            "chat_id": {"S": chat},
                            "sequence": {"N": str(s)},
                            "text": {"S": f"message {s} " + "x" * 100},
                        },
                    )
                    for s in range(args.query_items)
                ),
            )
            load = time.perf_counter() - started
            results[f"PutItem c=16 ops/s ({args.query_items} items)"] = (
                f"{args.query_items / load:.0f}"
            )
            say(f"loaded {args.query_items} items in {load:.1f}s")

            rng = random.Random(7)

            async def query() -> None:
                forward = rng.random() < 0.5
                pivot = rng.randrange(args.query_items)
                op = ">=" if forward else "<="
                page = await client.query(
                    TableName=table,
                    KeyConditionExpression=f"#pk = :p AND #s {op} :v",
                    ExpressionAttributeNames={"#pk": "chat_id", "#s": "sequence"},
                    ExpressionAttributeValues={":p": {"S": chat}, ":v": {"N": str(pivot)}},
                    ScanIndexForward=forward,
                    Limit=100,
                )
                assert page["Count"] == min(
                    100, args.query_items - pivot if forward else pivot + 1
                ), page["Count"]

            for _ in range(10):  # warm-up
                await query()
            latencies = [await timed(query) for _ in range(args.queries)]
            results["Query Limit=100 p50"] = ms(percentile(latencies, 50))
            results["Query Limit=100 p99"] = ms(percentile(latencies, 99))
            say(f"{len(latencies)} queries")

            latencies = [await single.append() for _ in range(args.sequential // 2)]
            results["txn c=1 p50, tables at 7k+ items"] = ms(percentile(latencies, 50))
        finally:
            await delete_tables(client, names_for(prefix))
    return results


def names_for(prefix: str) -> list[str]:
    return [f"{prefix}{spec.name}" for spec in SPECS]


def table(results: dict[str, dict[str, str]]) -> str:
    targets = list(results)
    metrics: list[str] = []
    for values in results.values():
        metrics.extend(m for m in values if m not in metrics)
    lines = [
        "| metric | " + " | ".join(targets) + " |",
        "|---|" + "---:|" * len(targets),
    ]
    for metric in metrics:
        row = [results[t].get(metric, "n/a") for t in targets]
        lines.append(f"| {metric} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, variable in EMULATOR_ENV.items():
        parser.add_argument(
            f"--{name}",
            default=os.environ.get(variable, ""),
            help=f"endpoint (default ${variable})",
        )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--query-items", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=300)
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    endpoints = {name: getattr(args, name) for name in EMULATOR_ENV if getattr(args, name)}
    if not endpoints:
        print("no endpoints: pass --dynoxide URL and/or --moto URL", file=sys.stderr)
        return 2
    results = {name: await measure(name, url, args) for name, url in endpoints.items()}
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(amain(parse_args(None))))
