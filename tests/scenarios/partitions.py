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

import random
import socket
from collections.abc import Mapping

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
