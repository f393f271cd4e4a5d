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
from aiokafka.partitioner import DefaultPartitioner

from messaging.devstack.toxiproxy import Path, Toxiproxy
from messaging.settings import Settings
from tests.harness import free_port
from tests.scenarios.harness import App

PATHS = ("dynamodb", "redis", "client")


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
            (response,) = await admin.describe_consumer_groups([settings.kafka_consumer_group])
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
    """An app process whose store, Redis and client paths run through proxies."""

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        self.ports = {kind: free_port() for kind in PATHS}
        super().__init__(
            name,
            {
                **env,
                "MESSAGING_DYNAMODB_ENDPOINT": f"http://127.0.0.1:{self.ports['dynamodb']}",
                "MESSAGING_REDIS_URL": f"redis://127.0.0.1:{self.ports['redis']}/0",
            },
        )
        self.paths: dict[str, Path] = {}

    @property
    def ws_url(self) -> str:
        """Clients connect through the client path's proxy."""
        return f"ws://127.0.0.1:{self.ports['client']}"

    async def make_paths(self, proxy: Toxiproxy, settings: Settings) -> None:
        upstreams = {
            "dynamodb": f"127.0.0.1:{settings.stack_dynamodb_port}",
            "redis": f"127.0.0.1:{settings.stack_redis_port}",
            "client": f"127.0.0.1:{self.port}",
        }
        for kind in PATHS:
            self.paths[kind] = await proxy.path(
                f"{self.name}-{kind}", self.ports[kind], upstreams[kind]
            )

    async def remove_paths(self, proxy: Toxiproxy) -> None:
        for path in self.paths.values():
            await proxy.remove(path.name)
