"""Three app processes behind HAProxy (ADR 0031): clients spread over them through the balancer,
one process drained (SIGTERM, close 1001) and one killed (SIGKILL) under traffic; every client
reconnects through the balancer to the survivor, nothing is lost, duplicated or reordered (the
consistency checker over every history), and a restarted process gets the next clients first
(``leastconn``).

The test runs its own HAProxy with its own configuration (the stack's, rendered by the same
function) in a temporary folder, on free ports: never the shared stack's app tier or port.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import pytest

from messaging.devstack.apps import haproxy_binary, render_haproxy_config
from messaging.settings import Settings, env_var
from tests.conftest import RUN_ID
from tests.harness import ARTIFACTS
from tests.integration.conftest import app_env, prepare_stack
from tests.scenarios.harness import App, Member, Scenario, Traffic

MEMBERS = 9


@attrs.define
class Balanced:
    scenario: Scenario
    apps: list[App]
    front: App
    """Only its port and URLs are used: HAProxy's public address."""
    haproxy: subprocess.Popen[bytes]


async def _answering_instance(front: App) -> str | None:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            answer = await http.get(front.base_url + "/healthz")
    except httpx.HTTPError:
        return None
    return str(answer.json()["instance"]) if answer.status_code == 200 else None


def _start_haproxy(config: Path) -> subprocess.Popen[bytes]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with (ARTIFACTS / f"haproxy-{RUN_ID}.log").open("ab") as log:
        return subprocess.Popen(
            [haproxy_binary(), "-db", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
async def balanced(stack: Settings, tmp_path: Path) -> AsyncIterator[Balanced]:
    settings = await prepare_stack(
        attrs.evolve(
            stack,
            kafka_messages_topic=f"{stack.kafka_messages_topic}-lb",
            kafka_consumer_group=f"{stack.kafka_consumer_group}-lb",
        )
    )
    # The balancer test is about HAProxy's spread, drain and crash handling: a loaded machine's
    # slow store path must not make an app unready (ADR 0034) and skew the spread (seen in a CI
    # rehearsal at load 15 on two cores: [4, 4, 1]).
    env = {**app_env(settings), env_var("store_latency_unready_ms"): "60000"}
    apps = [App(f"lb{RUN_ID}-{n}", env) for n in (1, 2, 3)]
    front = App(f"lb{RUN_ID}-haproxy", {})
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        render_haproxy_config("127.0.0.1", front.port, [(a.name, a.port) for a in apps])
    )
    run = Scenario(settings, apps, label="load-balancer")
    await asyncio.gather(*(app.launch() for app in apps))
    haproxy = _start_haproxy(config)
    try:
        seen: set[str | None] = set()
        for _ in range(100):  # idle, leastconn takes the processes in turn
            seen.add(await _answering_instance(front))
            if seen >= {app.instance_id for app in apps}:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"not every process answered through HAProxy within 10 s: {seen}")
        yield Balanced(run, apps, front, haproxy)
    finally:
        await run.close()
        await asyncio.to_thread(_stop, haproxy)
        await asyncio.gather(*(app.sigkill() for app in apps))


async def _sockets(app: App) -> int:
    return int(await app.metric("messaging_ws_connections")) if app.alive else 0


async def _wait_sockets(app: App, want: int, seconds: float = 30.0) -> int:
    have = -1
    for _ in range(int(seconds / 0.1)):
        have = await _sockets(app)
        if have == want:
            return have
        await asyncio.sleep(0.1)
    return have


async def test_drain_and_crash_behind_the_balancer(balanced: Balanced) -> None:
    run, apps, front = balanced.scenario, balanced.apps, balanced.front
    began = time.monotonic()

    # Nine users log in and connect through the balancer: leastconn spreads them.
    members: list[Member] = []
    for n in range(MEMBERS):
        members.append(await run.member(f"m{n}", front, connect=True))
    spread = [await _sockets(app) for app in apps]
    assert sum(spread) == MEMBERS, spread
    assert min(spread) >= 2, f"leastconn left a process nearly empty: {spread}"
    run.note(f"sockets per process {spread}")

    await run.group(members[0], members[1:], "everyone")
    for a, b in zip(members[:3], members[3:6], strict=True):
        await run.direct(a, b)
    for member in members:  # learn the chats made meanwhile (a sync over the new chats)
        await member.chat.sync(sorted(member.chats))

    traffic = Traffic(members, random.Random(18), interval=(0.05, 0.3), inflight=2).start()
    try:
        await asyncio.sleep(2.0)
        run.note("SIGTERM (drain) app 1")
        # uvicorn exits by re-raising the SIGTERM it handled: -15 after a complete drain.
        code = await asyncio.to_thread(apps[0].terminate)
        assert code in (0, -signal.SIGTERM), apps[0].log_tail()
        assert "Application shutdown complete" in apps[0].log_tail(), apps[0].log_tail()
        await asyncio.sleep(2.0)
        run.note("SIGKILL app 2")
        await apps[1].sigkill()
        await asyncio.sleep(3.0)
    finally:
        await traffic.stop()
    run.note(f"{traffic.sent} sends")
    assert traffic.sent > 20

    # Every client is back, on the one process left, through the same public address.
    assert await _wait_sockets(apps[2], MEMBERS) == MEMBERS, run.context
    await run.settle_sends()
    await run.converge()
    report = await run.final_check()
    assert report.ok

    # The drained process comes back on its port: once HAProxy sees it ready (rise 2 x 0.5 s),
    # the emptiest process takes the next clients.
    await apps[0].restart()
    for _ in range(100):
        if await _answering_instance(front) == apps[0].instance_id:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the restarted process got no request through the balancer within 10 s")
    late = await run.member("late", front, connect=True)
    assert await _wait_sockets(apps[0], 1) == 1
    assert late.client is not None
    run.note(f"done in {time.monotonic() - began:.1f}s")
