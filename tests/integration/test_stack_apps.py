"""``messaging stack up --apps N`` on the real stack (ADR 0031): the tier's apps and HAProxy start
from a stack folder of the test's own, on free ports, with the session's tables and a topic of
its own; the public port serves every app in turn; ``stack status`` shows each app's sockets; an
app stopped with SIGTERM is replaced by a plain ``up``; ``--apps 0`` stops the tier. The shared
stack's services are only used, never started or stopped (this stack folder has no pid file of
theirs, and ``up_apps`` touches only the tier)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest

from messaging.client import ChatClient, ClientOptions, RestClient
from messaging.devstack import stack as devstack
from messaging.devstack.apps import App
from messaging.settings import Settings
from tests.integration.conftest import app_env, prepare_stack
from tests.scenarios.harness import random_phone

APPS = 2


def _free_run(count: int) -> int:
    """A base port whose next ``count`` ports are free (base itself too)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count >= 65000:
            continue
        try:
            held = []
            for port in range(base, base + count + 1):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise RuntimeError("no run of free ports")


@pytest.fixture
def tier(stack: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    base = _free_run(APPS + 1)
    settings = attrs.evolve(
        stack,
        stack_dir=tmp_path / "stack",
        stack_apps=APPS,
        port=base,
        stack_app_port=base,
        kafka_messages_topic=f"{stack.kafka_messages_topic}-tier",
        kafka_consumer_group=f"{stack.kafka_consumer_group}-tier",
    )
    for name, value in app_env(settings).items():
        monkeypatch.setenv(name, value)
    try:
        yield settings
    finally:
        devstack.up_apps(attrs.evolve(settings, stack_apps=0), lambda _line: None)


async def test_the_tier_serves_through_haproxy_and_status_counts_sockets(tier: Settings) -> None:
    await prepare_stack(tier)
    lines: list[str] = []
    await asyncio.to_thread(devstack.up_apps, tier, lines.append)
    assert any("serving http://" in line for line in lines), lines
    public = f"http://127.0.0.1:{tier.port}"

    seen = set()
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(20):
            seen.add((await http.get(public + "/healthz")).json()["instance"])
    assert len(seen) == APPS, seen  # idle leastconn takes them in turn

    rest = RestClient(public, timeout=20)
    client: ChatClient | None = None
    try:
        await rest.login_dev(random_phone(), "tier-device")
        assert rest.session is not None
        client = ChatClient(
            public.replace("http://", "ws://") + "/v1/ws",
            rest.session.token,
            rest.session.device_id,
            options=ClientOptions(start_timeout=20),
        )
        await client.start()
        status: list[str] = []
        for _ in range(50):
            status.clear()
            await asyncio.to_thread(devstack.status, tier, status.append)
            apps = [line for line in status if line.startswith("app-")]
            if any(line.endswith(", 1 sockets") for line in apps):
                break
            await asyncio.sleep(0.1)
        assert len(apps) == APPS, status
        assert sorted(line.rsplit(", ", 1)[1] for line in apps) == ["0 sockets", "1 sockets"]
    finally:
        if client is not None:
            await client.close()
        await rest.aclose()

    # A drained app is started again by a plain `up`; HAProxy keeps running.
    first = next(s for s in devstack.app_tier(tier) if isinstance(s, App))
    haproxy_pid = devstack.app_tier(tier)[-1].process.pid()
    assert await asyncio.to_thread(first.process.stop)
    await asyncio.to_thread(devstack.up_apps, tier, lambda _line: None)
    assert first.process.pid() is not None
    assert devstack.app_tier(tier)[-1].process.pid() == haproxy_pid

    await asyncio.to_thread(devstack.up_apps, attrs.evolve(tier, stack_apps=0), lambda _l: None)
    assert all(s.process.pid() is None for s in devstack.app_tier(tier))
