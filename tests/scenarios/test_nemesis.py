"""A randomized "nemesis" run: many clients in 1:1 and group chats on two app processes send
while faults drawn from a seed hit the processes, the clients and the stack; then every client
syncs and the checker runs over everything.

- Short form (part of ``make test``): about 15 s of traffic, 8 clients, the cheaper faults.
- Long form (marker ``nemesis_long``, deselected by default): ``MESSAGING_TEST_NEMESIS_SECONDS``
  (default 60) of traffic, 10 clients, every fault including Kafka and Redis restarts::

      MESSAGING_TEST_NEMESIS_SECONDS=60 .venv/bin/pytest tests/scenarios -m nemesis_long

- Partitions (``test_nemesis_partitions``, part of ``make test``, and its long form with the
  marker ``nemesis_long``): two app processes of their own whose DynamoDB, Redis and client paths
  go through Toxiproxy (the ``network`` fixture, ADR 0028); the nemesis draws blackholes (both
  ways, or a -> Redis only), half-open client paths, added latency with jitter and bandwidth
  limits on those paths, besides the process and client faults; it never touches the shared
  stack services. The long form also gives them a Kafka node of their own reached through a
  path per process (marker ``own_kafka``) and draws Kafka cuts and Kafka bandwidth limits; the
  short form keeps the shared Kafka (the extra node's start would add 10-30 s to ``make test``).

- ``MESSAGING_TEST_NEMESIS_SEED=<n>`` repeats a run: the seed fixes the chats, the members, every
  traffic choice and the fault schedule (not the operating system's timing). Every failure
  message starts with the seed.
"""

from __future__ import annotations

import asyncio
import os
import random
import traceback

import attrs
import httpx
import pytest

from tests.scenarios.conftest import Network
from tests.scenarios.harness import App, Member, Scenario, Traffic, seed_from_env

CHEAP_FAULTS = (
    "kill_before_handoff",
    "kill_after_persist",
    "sigkill",
    "drop",
    "stall",
    "offline",
    "redis_flush",
    "dynamodb_outage",
)
ALL_FAULTS = (*CHEAP_FAULTS, "kafka_restart", "redis_restart")
NETWORK_FAULTS = (
    "cut_dynamodb",
    "cut_redis",
    "cut_redis_outbound",
    "half_open_client",
    "slow_dynamodb",
    "slow_redis",
    "slow_client",
    "bandwidth_dynamodb",
    "bandwidth_client",
)
"""Faults of one path of one process, through the ``network`` fixture's proxies."""
KAFKA_PATH_FAULTS = ("cut_kafka", "bandwidth_kafka")
"""Faults of a process's Kafka path: only with a Kafka node of the run's own (``own_kafka``)."""
PROCESS_AND_CLIENT_FAULTS = (
    "kill_before_handoff",
    "kill_after_persist",
    "sigkill",
    "drop",
    "stall",
    "offline",
)
PARTITION_RUN_FAULTS = (
    *NETWORK_FAULTS,
    *NETWORK_FAULTS,  # drawn twice as often as the process and client faults
    *PROCESS_AND_CLIENT_FAULTS,
)
PARTITION_RUN_FAULTS_WITH_KAFKA = (
    *NETWORK_FAULTS,
    *KAFKA_PATH_FAULTS,
    *NETWORK_FAULTS,
    *KAFKA_PATH_FAULTS,
    *PROCESS_AND_CLIENT_FAULTS,
)
BANDWIDTHS_KB = (2, 8, 32)
"""The rates a ``bandwidth_*`` fault draws from, in KB/s each way."""
STACK_FAULTS = frozenset({"redis_flush", "dynamodb_outage", "kafka_restart", "redis_restart"})


@attrs.frozen
class Fault:
    at: float
    kind: str
    target: int
    duration: float

    def __str__(self) -> str:
        return f"{self.at:.1f}s {self.kind}#{self.target} ({self.duration:.1f}s)"


def schedule(rng: random.Random, seconds: float, kinds: tuple[str, ...]) -> list[Fault]:
    """Faults every 1.5-5 s from the second second to 3 s before the end; at most one stack
    fault in any 8 s (each costs seconds of recovery)."""
    faults: list[Fault] = []
    at = rng.uniform(1.0, 2.5)
    last_stack = -100.0
    while at < seconds - 3.0:
        kind = rng.choice(kinds)
        if kind in STACK_FAULTS and at - last_stack < 8.0:
            kind = rng.choice([k for k in kinds if k not in STACK_FAULTS])
        if kind in STACK_FAULTS:
            last_stack = at
        faults.append(Fault(at, kind, rng.randrange(1_000_000), rng.uniform(0.5, 3.0)))
        at += rng.uniform(1.5, 5.0)
    return faults


class Nemesis:
    def __init__(
        self, scenario: Scenario, rng: random.Random, network: Network | None = None
    ) -> None:
        self.scenario = scenario
        self.network = network
        self.busy: set[str] = set()
        """Proxy paths with a fault on them now (healing a path removes all its faults)."""
        self.rng = rng
        self.background: list[asyncio.Task[None]] = []
        self.stopping = False
        self.stack_lock = asyncio.Lock()
        """One stack fault at a time; the schedule goes on meanwhile."""

    @property
    def apps(self) -> list[App]:
        return self.scenario.apps

    async def supervise(self) -> None:
        """Restart a dead app process (as an orchestrator would), after a short pause."""
        while not self.stopping:
            for app in self.apps:
                if not app.alive and not self.stopping:
                    self.scenario.note(f"{app.name} is dead ({app.returncode}); restarting")
                    await asyncio.sleep(0.5)
                    await app.restart()
                    self.scenario.note(f"{app.name} restarted")
            await asyncio.sleep(0.3)

    async def apply(self, fault: Fault) -> None:
        scenario = self.scenario
        app = self.apps[fault.target % len(self.apps)]
        online = [m for m in scenario.members if m.client is not None]
        member = online[fault.target % len(online)] if online else None
        scenario.note(f"fault {fault}")
        if fault.kind in ("kill_before_handoff", "kill_after_persist"):
            if app.alive and not app.restarting and not app.armed:
                try:
                    await app.arm(fault.kind.removeprefix("kill_"))
                except httpx.HTTPError as exc:  # it died just now (another fault)
                    scenario.note(f"{app.name}: not armed ({exc!r})")
        elif fault.kind == "sigkill":
            if app.alive:
                await app.sigkill()
        elif fault.kind == "drop" and member is not None:
            member.chat.drop_connection()
        elif fault.kind == "stall" and member is not None:
            self.background.append(asyncio.create_task(self.stall(member, fault.duration)))
        elif fault.kind == "offline" and member is not None:
            other = self.apps[(fault.target // 7) % len(self.apps)]
            self.background.append(asyncio.create_task(self.offline(member, fault.duration, other)))
        elif fault.kind in STACK_FAULTS:
            self.background.append(asyncio.create_task(self.stack_fault(fault)))
        elif fault.kind in (*NETWORK_FAULTS, *KAFKA_PATH_FAULTS) and self.network is not None:
            self.background.append(asyncio.create_task(self.path_fault(fault, self.network)))

    async def path_fault(self, fault: Fault, network: Network) -> None:
        """One fault on one path of one process for the fault's duration, then healed; skipped
        when that path already has one."""
        app = network.apps[fault.target % len(network.apps)]
        what = fault.kind.split("_", 1)[1].removesuffix("_outbound")
        path = app.paths.get("client" if what == "open_client" else what)
        if path is None:  # a Kafka fault without a Kafka node of the run's own
            self.scenario.note(f"{fault.kind} on {app.name} skipped: no such path")
            return
        if path.name in self.busy:
            self.scenario.note(f"{fault.kind} on {app.name} skipped: the path is busy")
            return
        self.busy.add(path.name)
        proxy = network.proxy
        try:
            async with self.scenario.fault(f"{fault.kind} {app.name}"):
                try:
                    if fault.kind == "cut_redis_outbound":
                        await proxy.blackhole(path, stream="upstream")
                    elif fault.kind.startswith(("cut_", "half_open_")):
                        await proxy.blackhole(path)
                    elif fault.kind.startswith("bandwidth_"):
                        rate = self.rng.choice(BANDWIDTHS_KB)
                        self.scenario.note(f"{path.name}: {rate} KB/s each way")
                        await proxy.bandwidth(path, rate, stream="both")
                    else:
                        millis = self.rng.randint(50, 400)
                        await proxy.latency(path, millis, jitter_millis=millis // 2)
                    await asyncio.sleep(fault.duration * 2)
                finally:
                    await proxy.heal(path)
        finally:
            self.busy.discard(path.name)

    async def stack_fault(self, fault: Fault) -> None:
        async with self.stack_lock:
            if fault.kind == "redis_flush":
                await self.scenario.flush_redis()
            else:
                service = {
                    "redis_restart": "redis",
                    "kafka_restart": "kafka",
                    "dynamodb_outage": "dynamodb",
                }[fault.kind]
                await self.scenario.service_outage(service, fault.duration)

    async def stall(self, member: Member, seconds: float) -> None:
        client = member.chat
        client.pause_reading()
        try:
            await asyncio.sleep(seconds)
        finally:
            client.resume_reading()

    async def offline(self, member: Member, seconds: float, app: App) -> None:
        await member.disconnect()
        await asyncio.sleep(seconds)
        for _ in range(5):  # the process may be down for a while (another fault)
            try:
                await member.connect(app)
                return
            except TimeoutError:
                self.scenario.note(f"{member.name}: reconnect to {app.name} timed out")
        await member.connect(app)

    async def run(self, faults: list[Fault], seconds: float) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        supervisor = asyncio.create_task(self.supervise())
        try:
            for fault in faults:
                await asyncio.sleep(max(0.0, began + fault.at - loop.time()))
                await self.apply(fault)
            await asyncio.sleep(max(0.0, began + seconds - loop.time()))
        finally:
            await asyncio.gather(*self.background)
            self.stopping = True
            await supervisor
        # An armed fault point that never fired must not fire during the final phase.
        for app in self.apps:
            if app.armed and app.alive:
                self.scenario.note(f"{app.name}: disarming {sorted(app.armed)} (SIGKILL)")
                await app.sigkill()
            await app.restart()


async def nemesis_run(
    scenario: Scenario,
    seconds: float,
    clients: int,
    kinds: tuple[str, ...],
    network: Network | None = None,
) -> None:
    seed = seed_from_env()
    scenario.label = f"nemesis seed={seed} seconds={seconds:g} (MESSAGING_TEST_NEMESIS_SEED={seed})"
    print(f"\n{scenario.label}")
    rng = random.Random(seed)
    faults = schedule(rng, seconds, kinds)
    scenario.note("schedule: " + "; ".join(str(f) for f in faults))
    try:
        a, b = scenario.apps
        members = [await scenario.member(f"c{i}", (a, b)[i % 2]) for i in range(clients)]
        for i in range(3):  # groups of 3 to 5
            group = rng.sample(members, rng.randint(3, min(5, clients)))
            await scenario.group(group[0], group[1:], f"group{i}")
        for _ in range(4):
            x, y = rng.sample(members, 2)
            if not x.chats & y.chats or rng.random() < 0.5:
                await scenario.direct(x, y)
        for member in members:
            if not member.chats:
                await scenario.direct(member, members[(members.index(member) + 1) % clients])
        for member in members:
            await member.connect()
        traffic = Traffic(members, rng, interval=(0.1, 0.6), tag="nemesis").start()
        try:
            await Nemesis(scenario, rng, network).run(faults, seconds)
        finally:
            await traffic.stop()
        scenario.note(f"traffic stopped after {traffic.sent} sends")
        await scenario.ensure_ready()
        for member in members:
            if member.client is None:
                await member.connect()
        await scenario.settle_sends(seconds=120, allow_abandoned=True)
        await scenario.converge(seconds=90)
        report = await scenario.final_check()
    except pytest.fail.Exception:
        raise
    except Exception as exc:
        lines = traceback.format_exc().splitlines()
        ours = [line for line in lines if "tests/scenarios" in line]  # where, in the harness
        scenario.fail(f"{exc!r}", [*ours[-8:], *lines[-4:]])
    print(f"{scenario.label}: {report.summary(0)}; {len(faults)} faults")


async def test_nemesis_short(scenario: Scenario) -> None:
    """About 15 s of traffic from 8 clients with the cheaper faults (part of ``make test``)."""
    await nemesis_run(scenario, seconds=15.0, clients=8, kinds=CHEAP_FAULTS)


@pytest.mark.nemesis_long
async def test_nemesis_long(scenario: Scenario) -> None:
    """``MESSAGING_TEST_NEMESIS_SECONDS`` (default 60) of traffic from 10 clients, every fault."""
    seconds = float(os.environ.get("MESSAGING_TEST_NEMESIS_SECONDS") or 60)
    await nemesis_run(scenario, seconds=seconds, clients=10, kinds=ALL_FAULTS)


async def test_nemesis_partitions(network: Network) -> None:
    """About 15 s of traffic from 8 clients on two proxied processes: cuts, half-open client
    paths and latency on their paths, with the process and client faults (``make test``)."""
    await nemesis_run(
        network.scenario, seconds=15.0, clients=8, kinds=PARTITION_RUN_FAULTS, network=network
    )


@pytest.mark.nemesis_long
@pytest.mark.own_kafka
async def test_nemesis_partitions_long(network: Network) -> None:
    """The same for ``MESSAGING_TEST_NEMESIS_SECONDS`` (default 60), 10 clients, and a Kafka
    node of the run's own reached through a path per process, so that it draws Kafka cuts and
    Kafka bandwidth limits too."""
    seconds = float(os.environ.get("MESSAGING_TEST_NEMESIS_SECONDS") or 60)
    await nemesis_run(
        network.scenario,
        seconds=seconds,
        clients=10,
        kinds=PARTITION_RUN_FAULTS_WITH_KAFKA,
        network=network,
    )
