"""The replicated Kafka profile (ADR 0029): three KRaft nodes, topics with three replicas and
``min.insync.replicas=2``. Under traffic on two app processes, the leader of a busy partition is
killed, then the active controller: live delivery goes on in every chat while the node is down
(no explicit sync: a partition without another in-sync replica would stop it), and the checker
passes at the end. Then (ADR 0037) a busy partition's leader is cut by the fault proxy from the
other two nodes, replication and controller traffic both ways, while the app processes and the
test still reach every node: the majority fences it, takes its leaderships and drops it from
every ISR, writes go on there, and after healing it rejoins every ISR; no acknowledged message
is missing from the log.

The three nodes are this module's own (alternate ports, a private stack directory), beside the
shared single-node stack, whose DynamoDB API and Redis the app processes still use. Every
node reaches the others through Toxiproxy paths of its own, one per ordered pair of nodes and
kind of traffic (``MESSAGING_STACK_KAFKA_PEER_PROXY_PORT``); the clients connect directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from messaging.devstack import stack
from messaging.devstack.services import (
    Kafka,
    kafka_create_topics,
    kafka_peer_paths,
    kafka_port,
)
from messaging.devstack.toxiproxy import Path as ProxyPath
from messaging.devstack.toxiproxy import Toxiproxy
from messaging.infra.dynamodb import open_dynamo
from messaging.infra.schema import ensure_tables
from messaging.settings import Settings, env_var
from tests.conftest import RUN_ID
from tests.scenarios.conftest import scenario_env
from tests.scenarios.harness import App, Scenario, Traffic, published
from tests.scenarios.partitions import free_block, partition_of
from tests.scenarios.test_stack_faults import acked_locations, population

NODES = 3
PEER_PORTS = 27
"""The block of ``stack_kafka_peer_proxy_port``: 9 replication listeners and 18 proxy paths."""
CUT_BOUND = 30.0
"""After the cut, the majority has fenced the cut node (its leaderships moved, it left every
ISR) within this (measured: see docs/failure-scenarios.md)."""
REJOIN_BOUND = 60.0
"""After healing, the cut node is back in every partition's ISR within this."""


@attrs.frozen
class Kafka3:
    settings: Settings
    proxy: Toxiproxy
    peers: dict[tuple[int, int, str], ProxyPath]
    """(source, target, kind) -> the Toxiproxy path (ADR 0037)."""


@pytest.fixture
async def kafka3_net(scenario_settings: Settings, tmp_path: Path) -> AsyncIterator[Kafka3]:
    base = free_block(2 * NODES + PEER_PORTS)
    settings = attrs.evolve(
        scenario_settings,
        stack_dir=tmp_path,
        stack_kafka_brokers=NODES,
        stack_kafka_port=base,
        stack_kafka_controller_port=base + 1,
        stack_kafka_peer_proxy_port=base + 2 * NODES,
        kafka_bootstrap=",".join(f"127.0.0.1:{base + 2 * n}" for n in range(NODES)),
        # Tables of its own too: the session's other app processes sweep the outbox table they
        # share, and published the entries of this cluster's failed publishes to the shared
        # Kafka (every message "missing" from this cluster's log in two CI rehearsals was there).
        table_prefix=f"{scenario_settings.table_prefix}k3-",
        kafka_messages_topic=f"{scenario_settings.kafka_messages_topic}-k3",
        kafka_consumer_group=f"{scenario_settings.kafka_consumer_group}-k3",
    )
    nodes = [s for s in stack.services(settings) if isinstance(s, Kafka)]
    proxy = Toxiproxy(f"http://127.0.0.1:{settings.stack_toxiproxy_port}")
    peers: dict[tuple[int, int, str], ProxyPath] = {}
    try:
        for peer in kafka_peer_paths(settings):
            peers[peer.source, peer.target, peer.kind] = await proxy.path(
                f"k3{RUN_ID}-{peer.name}", peer.listen_port, f"127.0.0.1:{peer.upstream_port}"
            )
        await asyncio.gather(
            *(asyncio.to_thread(stack.start_service, settings, n.name, print) for n in nodes)
        )
        async with open_dynamo(settings.dynamodb_endpoint, settings.aws_region) as client:
            await ensure_tables(client, settings.table_prefix)
        await kafka_create_topics(settings.kafka_bootstrap, settings.kafka_topics, brokers=NODES)
        # Three replicas, two in sync, on every partition: the cut of ADR 0037 proves nothing
        # (and loses acknowledged writes) on a topic created before every node registered.
        for partition in await _partitions(settings):
            assert len(partition["replicas"]) == NODES, partition
        yield Kafka3(settings, proxy, peers)
    finally:
        # SIGKILL: the cluster and its data are this test's own, and a graceful stop of the
        # last node waits out its grace period (no quorum left for a controlled shutdown).
        for node in nodes:
            node.process.kill()
        for path in peers.values():
            await proxy.remove(path.name)
        await proxy.aclose()


def _node(settings: Settings, node_id: int) -> Kafka:
    for service in stack.services(settings):
        if isinstance(service, Kafka) and service.node == node_id:
            return service
    raise AssertionError(node_id)


async def _partitions(settings: Settings, bootstrap: str | None = None) -> list[dict[str, Any]]:
    """The messages topic's partitions as a node sees them (``bootstrap``: ask only these)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap or settings.kafka_bootstrap)
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([settings.kafka_messages_topic])
    finally:
        await admin.close()
    return list(topic["partitions"])


async def _leader_of(settings: Settings, chat_id: str) -> int:
    """The node leading the partition that a chat's messages go to (keyed by chat id)."""
    found = await _partitions(settings)
    partition = partition_of(chat_id, len(found))
    leader = next(p["leader"] for p in found if p["partition"] == partition)
    return int(leader)


async def _controller(settings: Settings) -> int:
    """The active KRaft controller: the quorum leader a node last recorded in its
    ``quorum-state`` file. (``describe_cluster``'s ``controller_id`` names a random broker under
    KRaft, not the controller: the "controller loss" phase killed a follower until 2026-12-02.)"""
    for service in stack.services(settings):
        if isinstance(service, Kafka):
            state = service.data_dir / "__cluster_metadata-0" / "quorum-state"
            with contextlib.suppress(OSError, ValueError):
                leader = int(json.loads(state.read_text()).get("leaderId", -1))
                if leader > 0:
                    return leader
    raise AssertionError("no node has recorded a quorum leader")


async def _cut_and_heal(net: Kafka3, scenario: Scenario, busy: str) -> None:
    """Cut the node leading ``busy``'s partition from the two others (its 8 paths, both ways),
    wait until the others have fenced it, require every member to converge while it is cut,
    heal, and wait until it is back in every ISR."""
    settings = net.settings
    victim = await _leader_of(settings, busy)
    others = ",".join(
        f"127.0.0.1:{kafka_port(settings, n)}" for n in range(1, NODES + 1) if n != victim
    )
    cut = [p for (s, t, _), p in net.peers.items() if victim in (s, t)]
    async with scenario.fault(f"node {victim} cut from the others"):
        for path in cut:
            await net.proxy.blackhole(path)
        began = time.monotonic()
        scenario.note(f"cut node {victim} (leads {busy}'s partition): {len(cut)} paths")
        while True:
            seen = await _partitions(settings, others)
            if not any(p["leader"] == victim or victim in p["isr"] for p in seen):
                break
            assert time.monotonic() - began < CUT_BOUND, (
                f"node {victim} still leads or is in sync after {CUT_BOUND}s: {seen}"
            )
            await asyncio.sleep(0.5)
        scenario.note(f"majority fenced node {victim} after {time.monotonic() - began:.1f}s")
        # Writes go on on the majority: every chat converges while the node is cut.
        await scenario.converge(seconds=30)
        scenario.note(f"converged during the cut, {time.monotonic() - began:.1f}s in")
        # While the log stalls (before the fencing) live delivery goes on through the direct
        # path of ADR 0033; how much of it, for the record.
        direct = [
            await app.metric("messaging_fanout_direct_messages_total") for app in scenario.apps
        ]
        failed = [
            await app.metric("messaging_outbox_publish_failures_total") for app in scenario.apps
        ]
        scenario.note(f"so far: direct deliveries {direct}, failed publishes {failed}")
        for path in cut:
            await net.proxy.heal(path)
    healed = time.monotonic()
    while True:
        seen = await _partitions(settings, others)
        if all(victim in p["isr"] for p in seen):
            break
        assert time.monotonic() - healed < REJOIN_BOUND, (
            f"node {victim} not back in every ISR {REJOIN_BOUND}s after healing: {seen}"
        )
        await asyncio.sleep(0.5)
    scenario.note(f"node {victim} back in every ISR {time.monotonic() - healed:.1f}s after healing")


def _ranges(missing: set[tuple[str, int]]) -> str:
    """Per chat, the lowest and highest missing sequence and how many."""
    chats: dict[str, list[int]] = {}
    for chat, sequence in missing:
        chats.setdefault(chat, []).append(sequence)
    return ", ".join(f"{c}: {min(s)}-{max(s)} ({len(s)})" for c, s in sorted(chats.items()))


async def test_live_delivery_survives_a_leader_kill_a_controller_loss_and_a_broker_cut(
    kafka3_net: Kafka3,
) -> None:
    """Under traffic on two app processes: the leader of a busy partition is SIGKILLed, then
    the active controller, each restarted after members converged without it. Then (ADR 0037)
    the busy partition's leader is cut from the two other nodes (every replication and
    controller path to and from it blackholed, both ways), while the app processes and the test
    still reach every node directly: the majority must fence it within a bound (its leaderships
    move, it leaves every ISR), writes (``acks=all``, ``min.insync.replicas=2``) go on on the
    two others so members converge during the cut, and after healing it is back in every ISR
    within a bound. At the end every acknowledged message is in the log (read back) and the
    checker passes. With ``acks=1`` the cut leader acknowledges writes no follower ever copies,
    and truncates them when it rejoins (docs/failure-scenarios.md)."""
    kafka3 = kafka3_net.settings
    env = {
        **scenario_env(kafka3),
        env_var("kafka_bootstrap"): kafka3.kafka_bootstrap,
    }
    apps = [App(f"scn{RUN_ID}-k3-{n}", env) for n in ("a", "b")]
    scenario = Scenario(kafka3, apps, label="replicated-kafka")
    try:
        await asyncio.gather(*(app.launch() for app in apps))
        members = await population(scenario)
        busy = sorted(scenario.chat_members)[0]
        traffic = Traffic(members, random.Random(29)).start()
        try:
            await asyncio.sleep(2.0)
            for what, victim in (
                ("the leader of a busy partition", await _leader_of(kafka3, busy)),
                ("the active controller", await _controller(kafka3)),
            ):
                node = _node(kafka3, victim)
                pid = node.process.pid()
                assert pid is not None
                async with scenario.fault(f"{what} killed"):
                    node.process.kill()
                    scenario.note(f"killed {what}: node {victim} (pid {pid})")
                    await asyncio.sleep(3.0)
                    # With one of three nodes gone every partition still has an in-sync
                    # replica to lead it: live delivery goes on without any explicit sync.
                    await scenario.converge(seconds=30)
                    await asyncio.to_thread(stack.start_service, kafka3, node.name, scenario.note)
                    scenario.note(f"node {victim} back")
                await asyncio.sleep(2.0)
            await _cut_and_heal(kafka3_net, scenario, busy)
            await asyncio.sleep(2.0)
        finally:
            await traffic.stop()
        await scenario.settle_sends()
        await scenario.converge(seconds=30)
        # A client fills a gap by sync when a later message arrives, so convergence alone would
        # not notice an acknowledged message that the log lost: read the log back.
        missing: set[tuple[str, int]] = set()
        for _ in range(20):
            missing = acked_locations(members) - await published(
                kafka3, kafka3.kafka_messages_topic
            )
            if not missing:
                break
            await asyncio.sleep(0.5)
        assert not missing, (
            f"{len(missing)} acknowledged message(s) are not in the log: "
            f"{_ranges(missing)}\n" + "\n".join(scenario.context)
        )
        await scenario.final_check()
    finally:
        await scenario.close()
        await asyncio.gather(*(app.sigkill() for app in apps))
