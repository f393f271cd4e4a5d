"""A slow or cut store path, and a half-open client path, on one of two app processes (issue 20
cases 1, 2, 4 and 6; ADR 0034). Each ends with the consistency checker over every client's
history; docs/failure-scenarios.md states the bounds, what was measured, and how each was shown
to fail with its mechanism switched off."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import attrs
import httpx
import pytest

from messaging.settings import Settings
from tests.integration.raw import Account, Socket, authed, group_chat, login
from tests.scenarios.conftest import Network
from tests.scenarios.harness import Traffic
from tests.scenarios.partitions import ProxiedApp
from tests.scenarios.test_stack_faults import population

SETTINGS = Settings()
DEADLINE = SETTINGS.dynamodb_deadline_seconds
ANSWER_MARGIN = 1.0
"""Every send is answered within the store deadline of its arrival plus this (ADR 0034)."""
UNREADY_BOUND = 5.0
"""A process whose store path turned slow or cut reports itself unready within this."""
FREED_BOUND = SETTINGS.ws_ping_interval_seconds + SETTINGS.ws_ping_timeout_seconds + 3.0
"""A half-open socket is freed within the ping interval, the pong timeout and this margin."""
SLOW_SHARE = 0.03
"""Under 300 +- 100 ms more on its store path, process a's writer in a chat shared with process
b's gets at least this share of b's acknowledgements (measured: see docs/failure-scenarios.md)."""
PROBE_RATE = 5.0
"""Sends per second of each probe writer (under the per-user limit of 10)."""
PROBE_INFLIGHT = 3


@attrs.define
class Probe:
    """A raw socket that sends at a steady rate with a few sends in flight, timing each answer
    from the moment its frame was written."""

    socket: Socket
    chat_id: str
    name: str
    asked: dict[str, float] = attrs.field(factory=dict)
    answers: list[tuple[str, float, dict[str, Any]]] = attrs.field(factory=list)

    async def run(self, seconds: float) -> None:
        reader = asyncio.create_task(self._read())
        try:
            stop = time.monotonic() + seconds
            n = 0
            while time.monotonic() < stop:
                await asyncio.sleep(1 / PROBE_RATE)
                if len(self.asked) - len(self.answers) >= PROBE_INFLIGHT:
                    continue
                n += 1
                cmid = f"{self.name}-{n}"
                self.asked[cmid] = time.monotonic()
                await self.socket.send(
                    {
                        "type": "send_message",
                        "chat_id": self.chat_id,
                        "client_message_id": cmid,
                        "text": cmid,
                    }
                )
            # Every send asked gets its answer (bounded: the test asserts the bound below).
            async with asyncio.timeout(DEADLINE + ANSWER_MARGIN + 5):
                while len(self.answers) < len(self.asked):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self) -> None:
        while True:
            frame = await self.socket.recv(60.0)
            if frame["type"] == "send_ack":
                cmid = frame["client_message_id"]
            elif frame["type"] == "error" and "client_message_id" in (frame.get("ref") or {}):
                cmid = frame["ref"]["client_message_id"]
            else:
                continue
            self.answers.append((cmid, time.monotonic() - self.asked[cmid], frame))

    @property
    def acks(self) -> int:
        return sum(f["type"] == "send_ack" for _, _, f in self.answers)

    def slowest(self) -> float:
        return max((took for _, took, _ in self.answers), default=0.0)

    def summary(self) -> str:
        codes: dict[str, int] = {}
        for _, _, f in self.answers:
            key = f.get("code", f["type"])
            codes[key] = codes.get(key, 0) + 1
        return f"{self.name}: {len(self.asked)} sent, {codes}, slowest {self.slowest():.2f}s"


def check_answers(probe: Probe) -> None:
    """Every send answered within the bound; every retriable error says when to retry."""
    assert len(probe.answers) == len(probe.asked), probe.summary()
    bound = DEADLINE + ANSWER_MARGIN
    assert probe.slowest() <= bound, f"{probe.summary()} (bound {bound:.1f}s)"
    for _, _, frame in probe.answers:
        if frame["type"] == "error":
            assert frame["retriable"], frame
            assert frame.get("retry_after_ms", 0) > 0, frame


async def unready_after(app: ProxiedApp, check: str, seconds: float) -> float | None:
    """Seconds until ``/readyz`` of ``app`` fails with ``check`` among the failing (None if
    not within ``seconds``)."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=5.0) as http:
        while time.monotonic() - started < seconds:
            answer = await http.get(app.base_url + "/readyz")
            if answer.status_code == 503 and check in answer.json()["failing"]:
                return time.monotonic() - started
            await asyncio.sleep(0.25)
    return None


async def writers(network: Network) -> tuple[Probe, Probe]:
    """A probe writer on each process, both in one group chat."""
    a, b = network.apps
    on_a, on_b = await login(a), await login(b)
    chat_id = await group_chat(a, on_a, [on_b])
    return (
        Probe(await authed(a, on_a), chat_id, "a"),
        Probe(await authed(b, on_b), chat_id, "b"),
    )


async def test_a_slow_store_path_keeps_its_share_answers_in_time_and_makes_the_process_unready(
    network: Network,
) -> None:
    """Case 1: 300 +- 100 ms more each way between process a and the DynamoDB API, for 15 s,
    under traffic in chats shared with process b. Head claims keep a's writer from being
    starved by b's faster head reads (it gets at least ``SLOW_SHARE`` of b's acks); every send
    is answered within the deadline plus the margin; ``/readyz`` on a fails ``store_latency``
    within ``UNREADY_BOUND``; after healing the checker passes."""
    scenario = network.scenario
    a, _ = network.apps
    members = await population(scenario)
    probe_a, probe_b = await writers(network)
    traffic = Traffic(members, random.Random(34)).start()
    try:
        await asyncio.sleep(2.0)
        await network.proxy.latency(a.paths["dynamodb"], 300, 100)
        scenario.note("a's store path: +300 +- 100 ms each way")
        unready, *_ = await asyncio.gather(
            unready_after(a, "store_latency", 15.0), probe_a.run(15.0), probe_b.run(15.0)
        )
        scenario.note(f"{probe_a.summary()}; {probe_b.summary()}; unready after {unready}")
        await network.proxy.heal(a.paths["dynamodb"])
        scenario.note("healed")
        await asyncio.sleep(3.0)
    finally:
        await traffic.stop()
    check_answers(probe_a)
    check_answers(probe_b)
    assert probe_a.acks >= SLOW_SHARE * probe_b.acks, (probe_a.summary(), probe_b.summary())
    assert unready is not None, "never unready"
    assert unready <= UNREADY_BOUND, unready
    await scenario.settle_sends()
    await scenario.converge(seconds=30)
    await scenario.final_check()


async def test_a_store_blackhole_answers_the_first_send_behind_acks_within_the_deadline(
    network: Network,
) -> None:
    """Cases 2 and 6: process a's path to the DynamoDB API goes silent (bytes dropped, nothing
    closed). A send written right behind several acks on the same connection is answered within
    the deadline plus the margin, as is every later one, each with ``store_unavailable`` and a
    ``retry_after_ms``; ``/readyz`` on a fails; after healing the same ``client_message_id``
    lands exactly once and the checker passes."""
    scenario = network.scenario
    a, _ = network.apps
    members = await population(scenario)
    probe, _ = await writers(network)
    traffic = Traffic(members, random.Random(28)).start()
    try:
        await asyncio.sleep(2.0)
        await network.proxy.blackhole(a.paths["dynamodb"])
        scenario.note("a cut from the DynamoDB API")
        for sequence in range(1, 6):  # acks the store must check and write, ahead of the send
            await probe.socket.send({"type": "ack", "chat_id": probe.chat_id, "sequence": sequence})
        unready, _ = await asyncio.gather(unready_after(a, "dynamodb", 10.0), probe.run(8.0))
        first = min(probe.answers, key=lambda answer: probe.asked[answer[0]])
        scenario.note(f"{probe.summary()}; first answered after {first[1]:.1f}s")
        await network.proxy.heal(a.paths["dynamodb"])
        scenario.note("healed")
        await asyncio.sleep(3.0)
    finally:
        await traffic.stop()
    check_answers(probe)
    assert {f.get("code") for _, _, f in probe.answers} == {"store_unavailable"}, probe.summary()
    assert unready is not None, "never unready"
    assert unready <= UNREADY_BOUND, unready
    frame = {
        "type": "send_message",
        "chat_id": probe.chat_id,
        "client_message_id": first[0],
        "text": first[0],
    }
    await probe.socket.send(frame)
    again = await probe.socket.recv_until("send_ack", 30.0)
    await probe.socket.send(frame)
    twice = await probe.socket.recv_until("send_ack", 30.0)
    assert again["sequence"] == twice["sequence"]
    assert twice["duplicate"] is True
    await scenario.settle_sends()
    await scenario.converge(seconds=30)
    await scenario.final_check()


@attrs.frozen
class Direct:
    """An app reached without its client path's proxy."""

    ws_url: str


@pytest.mark.app_settings(MESSAGING_LIMIT_CONNECTIONS_PER_USER="1")
async def test_a_half_open_client_path_is_freed_in_time_and_a_reconnecting_device_supersedes(
    network: Network,
) -> None:
    """Case 4: process a's client path goes silent both ways without FIN or RST. A device that
    reconnects directly right away supersedes its old socket: it is let in although the per-user
    limit is one, and a holds one socket for it, not two. Every half-open socket is freed
    within the ping interval plus the pong timeout (``FREED_BOUND``); after healing the
    members reconnect, sync, and the checker passes."""
    scenario = network.scenario
    a, _ = network.apps
    members = await population(scenario)
    device: Account = await login(a)
    old = await authed(a, device)  # through the proxied client path
    traffic = Traffic(members, random.Random(29)).start()
    try:
        await asyncio.sleep(2.0)
        before = await a.metric("messaging_ws_connections")
        assert before >= 4, before
        await network.proxy.blackhole(a.paths["client"])
        scenario.note(f"a's client path half-open ({before:g} sockets)")
        started = time.monotonic()
        new = await authed(Direct(f"ws://127.0.0.1:{a.port}"), device)  # type: ignore[arg-type]
        superseded = await a.metric("messaging_ws_superseded_total")
        held = await a.metric("messaging_ws_connections")
        scenario.note(f"device reconnected directly: superseded {superseded:g}, held {held:g}")
        while time.monotonic() - started < FREED_BOUND + 10:
            if await a.metric("messaging_ws_connections") <= 1:
                break
            await asyncio.sleep(0.5)
        freed = time.monotonic() - started
        scenario.note(f"a freed its half-open sockets after {freed:.1f}s")
        await new.send({"type": "ping", "id": "direct"})
        pong = await new.recv_until("pong")
        await network.proxy.heal(a.paths["client"])
        await asyncio.sleep(4.0)
    finally:
        await traffic.stop()
    del old  # half-open: its close frame reaches nobody
    assert superseded >= 1
    assert held <= before, (held, before)  # the new socket replaced the old one
    assert pong["id"] == "direct"
    assert freed <= FREED_BOUND, f"freed after {freed:.1f}s (bound {FREED_BOUND:.1f}s)"
    await new.close()
    await scenario.settle_sends(allow_abandoned=True)
    await scenario.converge(seconds=30)
    await scenario.final_check()
