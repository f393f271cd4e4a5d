"""Network paths of app processes through Toxiproxy (ADR 0028), for the partition scenarios.

Each app process of a :class:`Network` reaches the DynamoDB API and Redis through proxies of its
own, and its clients reach it through one more (``ws_url``), so a test can cut or degrade one
path of one process while both ends stay up. Control calls (``/readyz``, ``/metrics``, REST
set-up) go to the process directly, so that a cut client path does not blind the test.
Kafka is reached directly unless the network has a Kafka node of its own: a broker
advertises its own address in metadata, so proxying it needs a listener per path;
``tests/scenarios/conftest.py::proxied_network`` starts such a node with one per process
(``MESSAGING_STACK_KAFKA_PROXY_LISTENERS``) and adds a ``kafka`` path.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from messaging.devstack.toxiproxy import Path, Toxiproxy
from messaging.lab.processes import make_paths, path_ports, proxied_env, remove_paths
from messaging.settings import Settings
from tests.scenarios.harness import App


def free_block(width: int) -> int:
    """A base port whose next ``width`` ports are free (for a test's own Kafka nodes)."""
    for base in random.Random().sample(range(21000, 29000, 64), 100):
        try:
            for port in range(base, base + width):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of ports")


def partition_of(chat_id: str, partitions: int) -> int:
    """The partition of the messages topic a chat's events go to (keyed by chat id)."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(chat_id.encode(), every, every))


async def partitions_consumed(
    settings: Settings, members: int, seconds: float = 30.0
) -> dict[str, frozenset[int]] | None:
    """Which partitions of the messages topic each app process's fanout consumer holds (by
    instance id, the consumer's client id), once the group is stable with ``members``
    members, each assigned some; None if it is not within ``seconds``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                (response,) = await admin.describe_consumer_groups([settings.kafka_consumer_group])
            except KafkaError:  # e.g. the group's coordinator not known yet: ask again
                await asyncio.sleep(0.5)
                continue
            _, _, state, _, _, found = response.groups[0][:6]
            held = {
                client_id: frozenset(
                    p
                    for topic, parts in _decode(assignment)
                    if topic == settings.kafka_messages_topic
                    for p in parts
                )
                for _, client_id, _, _, assignment in (m[:5] for m in found)
                if assignment
            }
            if state == "Stable" and len(held) == members and all(held.values()):
                return held
            await asyncio.sleep(0.5)
        return None
    finally:
        await admin.close()


def _decode(assignment: bytes) -> list[tuple[str, list[int]]]:
    return list(ConsumerProtocolMemberAssignment.decode(assignment).assignment)


class ProxiedApp(App):
    """An app process whose store, Redis and client paths run through proxies (the lab
    console's processes use the same paths: ``messaging.lab.processes``)."""

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        self.ports = path_ports()
        super().__init__(name, {**env, **proxied_env(self.ports)})
        self.paths: dict[str, Path] = {}

    @property
    def ws_url(self) -> str:
        """Clients connect through the client path's proxy."""
        return f"ws://127.0.0.1:{self.ports['client']}"

    async def make_paths(self, proxy: Toxiproxy, settings: Settings) -> None:
        self.paths = await make_paths(proxy, self.name, self.ports, settings, self.port)

    async def remove_paths(self, proxy: Toxiproxy) -> None:
        await remove_paths(proxy, self.paths)
