"""The lab's own app processes: ``messaging serve`` with the fault hooks on, on a private
namespace (tables, topic, consumer group) of the shared stack, each reaching the DynamoDB API
and Redis through Toxiproxy paths of its own and reached by its clients through one more (as
the partition scenarios' ``ProxiedApp``), so that the console cuts one process's path without
touching anyone else's. A process keeps its port across a kill and a restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path as FsPath

import httpx

from messaging.bench.apps import AppProcess, free_port
from messaging.devstack.faults import arm_fault_point, sigkill
from messaging.devstack.toxiproxy import Path, Toxiproxy
from messaging.settings import Settings, env_var

PATHS = ("dynamodb", "redis", "client")
"""An app process's Toxiproxy paths (ADR 0028): to the DynamoDB API, to Redis, and its
clients' path to it."""


def path_ports() -> dict[str, int]:
    """A listen port for each of a process's paths, kept across its restarts."""
    return {kind: free_port() for kind in PATHS}


def proxied_env(ports: Mapping[str, int]) -> dict[str, str]:
    """The settings that send a process's store and Redis traffic through its paths."""
    return {
        env_var("dynamodb_endpoint"): f"http://127.0.0.1:{ports['dynamodb']}",
        env_var("redis_url"): f"redis://127.0.0.1:{ports['redis']}/0",
    }


async def make_paths(
    proxy: Toxiproxy, name: str, ports: Mapping[str, int], settings: Settings, app_port: int
) -> dict[str, Path]:
    """Process ``name``'s paths: each listens on its port of ``ports`` and forwards to the
    stack's service (or, for ``client``, to the process on ``app_port``)."""
    upstreams = {
        "dynamodb": f"127.0.0.1:{settings.stack_dynamodb_port}",
        "redis": f"127.0.0.1:{settings.stack_redis_port}",
        "client": f"127.0.0.1:{app_port}",
    }
    paths: dict[str, Path] = {}
    try:
        for kind in PATHS:
            paths[kind] = await proxy.path(f"{name}-{kind}", ports[kind], upstreams[kind])
    except BaseException:
        await remove_paths(proxy, paths)  # none left behind in Toxiproxy
        raise
    return paths


async def remove_paths(proxy: Toxiproxy, paths: Mapping[str, Path]) -> None:
    for path in paths.values():
        with contextlib.suppress(Exception):
            await proxy.remove(path.name)


class LabApp(AppProcess):
    """One app process of the lab; ``proxied``: its paths go through Toxiproxy."""

    def __init__(
        self, name: str, env: Mapping[str, str], log_dir: FsPath, *, proxied: bool
    ) -> None:
        self.proxied = proxied
        self.ports = path_ports() if proxied else {}
        # Routing entries refresh every few seconds, so a FLUSHALL heals within seconds.
        overrides = {env_var("fault_hooks"): "true", env_var("routing_ttl_seconds"): "3"}
        if proxied:
            overrides.update(proxied_env(self.ports))
        super().__init__(name, {**env, **overrides}, log_dir)
        self.paths: dict[str, Path] = {}
        self.restarts = 0
        self.busy = False
        """A kill or a restart is under way."""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def ws_url(self) -> str:
        """Where its clients connect: through the client path when proxied."""
        port = self.ports["client"] if self.proxied else self.port
        return f"ws://127.0.0.1:{port}"

    async def make_paths(self, proxy: Toxiproxy, settings: Settings) -> None:
        self.paths = await make_paths(proxy, self.name, self.ports, settings, self.port)

    async def remove_paths(self, proxy: Toxiproxy) -> None:
        await remove_paths(proxy, self.paths)

    async def launch(self, seconds: float = 60.0) -> None:
        self.spawn()
        try:
            await self.wait_healthy(seconds)
        except BaseException:
            await self.kill()
            raise

    async def kill(self) -> None:
        """SIGKILL (the scenario tests' crash)."""
        await asyncio.to_thread(sigkill, self.proc)

    async def restart(self, attempts: int = 5) -> None:
        """Start it again on the same port (retrying: a dependency may be down just now)."""
        if self.alive:
            return
        self.restarts += 1
        for attempt in range(attempts):
            try:
                await self.launch()
                return
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(1.0)

    async def arm(self, point: str) -> list[str]:
        return await arm_fault_point(self.base_url, point)

    async def metrics_text(self, http: httpx.AsyncClient) -> str | None:
        if not self.alive:
            return None
        try:
            answer = await http.get(self.base_url + "/metrics")
        except httpx.HTTPError:
            return None
        return answer.text if answer.status_code == 200 else None

    async def ready(self, http: httpx.AsyncClient) -> str:
        """``ok``, ``not ready`` (503), ``down`` (not running) or ``unreachable``."""
        if not self.alive:
            return "down"
        try:
            answer = await http.get(self.base_url + "/readyz")
        except httpx.HTTPError:
            return "unreachable"
        return "ok" if answer.status_code == 200 else "not ready"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: the sum of each metric's samples (labels summed away)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0].strip()
        try:
            number = float(value)
        except ValueError:
            continue
        totals[name] = totals.get(name, 0.0) + number
    return totals
