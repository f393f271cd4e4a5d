"""``messaging serve --workers N``: N full app processes on one port (SO_REUSEPORT), each with
its own instance id and routing; a dead worker is replaced; SIGTERM stops them all in order."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from websockets.protocol import State

from messaging.settings import Settings, env_var
from tests.harness import AppProcess
from tests.integration.conftest import app_env
from tests.integration.raw import Socket, authed, direct_chat, login


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


async def _instances_answering(app: AppProcess, want: int, tries: int = 200) -> set[str]:
    """Instance ids seen on /healthz over fresh connections, until ``want`` distinct ones."""
    seen: set[str] = set()
    for _ in range(tries):
        async with httpx.AsyncClient(timeout=2) as http:  # a new connection each time
            answer = await http.get(app.base_url + "/healthz")
        if answer.status_code == 200:
            seen.add(answer.json()["instance"])
        if len(seen) >= want:
            break
        await asyncio.sleep(0.05)
    return seen


@pytest.fixture
def workers(stack: Settings) -> Iterator[AppProcess]:
    # The test opens up to 16 devices of one phone (until the kernel spreads them over both
    # workers): lift the per-phone code limit (5 per window) the shared env keeps.
    env = {**app_env(stack), env_var("otp_requests_per_phone_per_window"): "100"}
    app = AppProcess("workers", env)
    app.serve_args = ["--workers", "2"]
    yield app.start()
    app.terminate()


async def test_two_workers_share_the_port_deliver_across_each_other_and_stop_together(
    stack: Settings, workers: AppProcess
) -> None:
    assert workers.proc is not None
    first = await _instances_answering(workers, 2)
    assert len(first) == 2, first
    assert all(i.startswith(workers.instance_id + "-w") for i in first)
    for _ in range(100):  # every worker is ready (its own consumer, routing, store clients)
        async with httpx.AsyncClient(timeout=5) as http:
            if (await http.get(workers.base_url + "/readyz")).status_code != 200:
                await asyncio.sleep(0.2)
                continue
        break

    sender, receiver = await login(workers), await login(workers)
    chat_id = await direct_chat(workers, sender, receiver)
    # Open receiver sockets until the kernel has put them on both workers (routing tells where).
    sockets: list[Socket] = []
    async with Redis.from_url(stack.redis_url) as redis:
        for _ in range(16):
            # A device of its own per socket: a second socket of one device replaces the first.
            device = await login(workers, phone=receiver.phone)
            sockets.append(await authed(workers, device))
            if len(await redis.zrange(f"route:{receiver.user_id}", 0, -1)) == 2:
                break
        assert len(await redis.zrange(f"route:{receiver.user_id}", 0, -1)) == 2
    out = await authed(workers, sender)
    await out.send(
        {"type": "send_message", "chat_id": chat_id, "client_message_id": "m1", "text": "hi"}
    )
    assert (await out.recv_until("send_ack"))["sequence"] == 1
    for socket in sockets:  # each worker delivered to the sockets it holds
        frame = await socket.recv_until("message", 15)
        assert (frame["text"], frame["sequence"]) == ("hi", 1)

    # A killed worker is replaced by a new one with a new instance id.
    victim = sorted(_children(workers.proc.pid))[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kids = _children(workers.proc.pid)
        if len(kids) == 2 and victim not in kids:
            break
        await asyncio.sleep(0.2)
    assert len(kids) == 2, kids
    assert victim not in kids
    later = await _instances_answering(workers, 2)
    assert len(later) == 2, later
    assert later != first, (first, later)

    # SIGTERM to the parent: every worker drains (1001 to its sockets) and the parent exits 0.
    # (The sockets the killed worker held were cut without a close frame: no code.)
    live = [s for s in [out, *sockets] if s.ws.state is not State.CLOSED]
    assert live
    workers.proc.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*(s.closed_with(30) for s in live))
    assert codes == [1001] * len(live), codes
    assert await asyncio.to_thread(workers.proc.wait, 40) == 0
    assert not any(map(_running, kids))


def _running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
