"""Helper process of the ``connections`` scenario: holds many idle authenticated sockets.

``python -m messaging.bench.sockets --url WS_URL --input FILE`` where FILE is a JSON list of
``[token, device_id]``, one per socket. Each socket is a :class:`~messaging.client.ChatClient`
(auth, ``ready``, the initial sync), opened ``--concurrency`` at a time. Writes JSON lines to
stdout: ``progress`` every second, ``ready`` once all are open (or failed, or ``--timeout``
passed); then waits for a line ``close`` (or end of input) on stdin, closes every client and
writes ``closed`` with the clients' statistics and its own RSS growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from typing import Any

from messaging.bench.procstat import raise_nofile, rss_bytes
from messaging.client import ChatClient, ClientOptions


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def _stdin_line() -> bytes:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return await reader.readline()


async def run(url: str, sockets: list[tuple[str, str]], concurrency: int, seconds: float) -> None:
    raise_nofile(len(sockets) + 1024)
    rss_start = rss_bytes(os.getpid()) or 0
    options = ClientOptions(
        discover_on_reconnect=False, start_timeout=min(seconds, 60.0), backoff_max=2.0
    )
    clients = [ChatClient(url, token, device, options=options) for token, device in sockets]
    limit = asyncio.Semaphore(concurrency)
    connected = failed = 0
    errors: Counter[str] = Counter()

    async def one(client: ChatClient) -> None:
        nonlocal connected, failed
        async with limit:
            try:
                await client.start()
                connected += 1
            except Exception as exc:
                failed += 1
                errors[type(exc).__name__] += 1

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            _emit({"event": "progress", "connected": connected, "failed": failed})

    reporter = asyncio.create_task(report())
    began = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(c) for c in clients)), seconds)
    except TimeoutError:
        errors["timeout"] += 1
    reporter.cancel()
    _emit(
        {
            "event": "ready",
            "connected": connected,
            "failed": failed,
            "seconds": round(time.monotonic() - began, 2),
            "errors": dict(errors),
        }
    )
    await _stdin_line()
    rss_held = rss_bytes(os.getpid()) or 0
    stats: Counter[str] = Counter()
    close_codes: Counter[str] = Counter()
    for client in clients:
        for name in ("connects", "reconnects", "connect_failures", "slow_consumer_disconnects"):
            stats[name] += int(getattr(client.stats, name))
        for code, count in client.stats.close_codes.items():
            close_codes[str(code)] += count
    closing = asyncio.Semaphore(256)

    async def close(client: ChatClient) -> None:
        async with closing:
            await client.close()

    await asyncio.wait_for(asyncio.gather(*(close(c) for c in clients)), 120)
    _emit(
        {
            "event": "closed",
            "stats": dict(stats),
            "close_codes": dict(close_codes),
            "rss_delta": rss_held - rss_start,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    with open(args.input) as source:
        sockets = [(str(t), str(d)) for t, d in json.load(source)]
    asyncio.run(run(args.url, sockets, args.concurrency, args.timeout))


if __name__ == "__main__":
    main()
