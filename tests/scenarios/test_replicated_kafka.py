"""The replicated Kafka profile (ADR 0029): three KRaft nodes, topics with three replicas and
``min.insync.replicas=2``. Under traffic on two app processes, the leader of a busy partition is
killed, then the active controller: live delivery goes on in every chat while the node is down
(no explicit sync: a partition without another in-sync replica would stop it), and the checker
passes at the end.

The three nodes are this module's own (alternate ports, a private stack directory), beside the
shared single-node stack, whose DynamoDB API and Redis the app processes still use.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from messaging.devstack import stack
from messaging.devstack.services import Kafka, kafka_create_topics
from messaging.settings import Settings, env_var
from tests.conftest import RUN_ID
from tests.scenarios.conftest import scenario_env
from tests.scenarios.harness import App, Scenario, Traffic
from tests.scenarios.test_stack_faults import population

NODES = 3


def _free_block(width: int) -> int:
    """A base port whose next ``width`` ports are free."""
    for base in random.Random().sample(range(21000, 29000, 16), 100):
        try:
            for port in range(base, base + width):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of ports")


@pytest.fixture(scope="module")
async def kafka3(
    scenario_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Settings]:
    base = _free_block(2 * NODES)
    settings = attrs.evolve(
        scenario_settings,
        stack_dir=Path(tmp_path_factory.mktemp("kafka3")),
        stack_kafka_brokers=NODES,
        stack_kafka_port=base,
        stack_kafka_controller_port=base + 1,
        kafka_bootstrap=",".join(f"127.0.0.1:{base + 2 * n}" for n in range(NODES)),
        kafka_messages_topic=f"{scenario_settings.kafka_messages_topic}-k3",
        kafka_consumer_group=f"{scenario_settings.kafka_consumer_group}-k3",
    )
    nodes = [s for s in stack.services(settings) if isinstance(s, Kafka)]
    try:
        await asyncio.gather(
            *(asyncio.to_thread(stack.start_service, settings, n.name, print) for n in nodes)
        )
        await kafka_create_topics(
            settings.kafka_bootstrap,
            settings.kafka_topics,
        )
        yield settings
    finally:
        for node in nodes:
            node.process.stop()


def _node(settings: Settings, node_id: int) -> Kafka:
    for service in stack.services(settings):
        if isinstance(service, Kafka) and service.node == node_id:
            return service
    raise AssertionError(node_id)


async def _leader_of(settings: Settings, chat_id: str) -> int:
    """The node leading the partition that a chat's messages go to (keyed by chat id)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([settings.kafka_messages_topic])
    finally:
        await admin.close()
    partitions = sorted(p["partition"] for p in topic["partitions"])
    partition = DefaultPartitioner()(chat_id.encode(), partitions, partitions)
    leader = next(p["leader"] for p in topic["partitions"] if p["partition"] == partition)
    return int(leader)


async def _controller(settings: Settings) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        return int((await admin.describe_cluster())["controller_id"])
    finally:
        await admin.close()


async def test_live_delivery_survives_a_partition_leader_kill_and_a_controller_loss(
    kafka3: Settings,
) -> None:
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
                node.process.kill()
                scenario.note(f"killed {what}: node {victim} (pid {pid})")
                await asyncio.sleep(3.0)
                # With one of three nodes gone every partition still has an in-sync
                # replica to lead it: live delivery goes on without any explicit sync.
                await scenario.converge(seconds=30)
                await asyncio.to_thread(stack.start_service, kafka3, node.name, scenario.note)
                scenario.note(f"node {victim} back")
                await asyncio.sleep(2.0)
        finally:
            await traffic.stop()
        await scenario.settle_sends()
        await scenario.converge(seconds=30)
        await scenario.final_check()
    finally:
        await scenario.close()
        await asyncio.gather(*(app.sigkill() for app in apps))
