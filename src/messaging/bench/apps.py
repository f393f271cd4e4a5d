"""The processes a bench run starts: ``messaging serve`` app processes and the bare echo
server; and the run's private tables, topic and consumer group on the running stack."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import httpx

from messaging.devstack import stack as devstack
from messaging.devstack.services import dynamodb_probe, kafka_create_topics, kafka_probe
from messaging.infra.dynamodb import open_dynamo
from messaging.infra.schema import ALL_TABLES, ensure_tables, table_name
from messaging.settings import Settings, env_var, lifted_limits_env

_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux: 32768 unless tuned)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port for a process or fault-proxy path to listen on, just below the kernel's
    ephemeral range and never the same twice in this process. A port the kernel hands out for
    ``bind(0)`` lies inside that range, where any outgoing connection may take it before the
    listener it was meant for binds: a Toxiproxy path failed with "address already in use" so in
    a CI rehearsal. (Test Kafka nodes take blocks from 21000-29000, below these.)"""
    low = _ephemeral_low()
    for port in random.sample(range(max(1024, low - 2700), low), 500):
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


@attrs.frozen(kw_only=True)
class Namespace:
    """What isolates one bench run on the shared stack."""

    run_id: str
    table_prefix: str
    topic: str
    consumer_group: str
    partitions: int = 8

    @classmethod
    def for_run(cls, run_id: str, partitions: int = 8) -> Namespace:
        return cls(
            run_id=run_id,
            table_prefix=f"bench{run_id}-",
            topic=f"bench-{run_id}",
            consumer_group=f"bench-fanout-{run_id}",
            partitions=partitions,
        )

    @property
    def baseline_prefix(self) -> str:
        return f"bench{self.run_id}-base-"

    @property
    def baseline_topic(self) -> str:
        return f"bench-{self.run_id}-base"


def app_env(namespace: Namespace, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment overrides for a bench app process: the run's tables, topic and group, abuse
    limits high enough for thousands of users on 127.0.0.1, groups up to 10,000 members, and an
    idle timeout longer than any run (the client library sends no ``ping`` frames)."""
    env = {
        **lifted_limits_env(),
        env_var("table_prefix"): namespace.table_prefix,
        env_var("kafka_messages_topic"): namespace.topic,
        env_var("kafka_messages_partitions"): str(namespace.partitions),
        env_var("kafka_consumer_group"): namespace.consumer_group,
        env_var("otp_sender"): "dev",
        env_var("otp_requests_per_phone_per_window"): "1000",
        env_var("max_group_members"): "10000",
        env_var("ws_idle_timeout_seconds"): "3600",
        # As before ADR 0034 (the pong timeout was the idle timeout): a loaded bench client
        # may answer pings late, and the bench measures load, not dead peers.
        env_var("ws_ping_timeout_seconds"): "3600",
    }
    env.update(extra or {})
    return env


class AppProcess:
    """One ``python -m messaging serve`` on a free port, output to a log file."""

    def __init__(self, name: str, env: Mapping[str, str], log_dir: Path, workers: int = 1) -> None:
        self.name = name
        self.workers = workers
        self.port = free_port()
        self.env = {
            **os.environ,
            **env,
            env_var("port"): str(self.port),
            env_var("host"): "127.0.0.1",
            env_var("instance_id"): name,
            "PYTHONUNBUFFERED": "1",  # every log line in the file before a SIGKILL
        }
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self, argv: list[str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv
                or [sys.executable, "-m", "messaging", "serve", "--workers", str(self.workers)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def wait_healthy(self, seconds: float = 60.0, path: str = "/readyz") -> None:
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(self.base_url + path)).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready within {seconds:g}s:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        """The processes that do the work: the workers of ``--workers N``, else the app itself."""
        if self.workers == 1:
            return [self.pid]
        children: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
        return sorted(children)

    async def wait_workers(self, seconds: float = 60.0) -> None:
        """With ``--workers N``: until N workers run and fresh connections all find them ready."""
        deadline = time.monotonic() + seconds
        streak = 0
        while time.monotonic() < deadline and streak < 4 * self.workers:
            ok = len(self.worker_pids()) == self.workers
            if ok:
                async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
                    with contextlib.suppress(httpx.HTTPError):
                        ok = (await http.get(self.base_url + "/readyz")).status_code == 200
            streak = streak + 1 if ok else 0
            await asyncio.sleep(0.05)
        if streak < 4 * self.workers:
            raise RuntimeError(f"{self.name}: workers not ready within {seconds:g}s")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the app drains), SIGKILL after ``timeout``; only this process, by its pid."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


async def start_apps(
    count: int,
    namespace: Namespace,
    log_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    workers: int = 1,
) -> list[AppProcess]:
    apps = [
        AppProcess(
            f"bench-{namespace.run_id}-app{i + 1}",
            app_env(namespace, extra_env),
            log_dir,
            workers,
        )
        for i in range(count)
    ]
    try:
        for app in apps:
            app.spawn()
        await asyncio.gather(*(app.wait_healthy() for app in apps))
        if workers > 1:
            await asyncio.gather(*(app.wait_workers() for app in apps))
    except BaseException:
        for app in apps:
            app.stop(5.0)
        raise
    return apps


def stop_apps(apps: list[AppProcess]) -> None:
    for app in apps:
        app.stop()


async def wait_for_stack(
    settings: Settings, say: Callable[[str], None], seconds: float = 180.0
) -> None:
    """Wait (bounded) until Kafka and the DynamoDB API answer their own protocols: the stack is
    shared, and other test runs may be restarting a service."""
    deadline = time.monotonic() + seconds
    noted = False
    while True:
        problems = [
            p
            for p in (
                await kafka_probe(settings.kafka_bootstrap),
                await dynamodb_probe(settings.dynamodb_endpoint, settings.aws_region),
            )
            if p
        ]
        if not problems:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the local stack is not healthy: " + "; ".join(problems))
        if not noted:
            say("waiting for the local stack: " + "; ".join(problems))
            noted = True
        await asyncio.sleep(2.0)


async def prepare(settings: Settings, namespace: Namespace) -> None:
    """The run's tables (ensure_tables) and Kafka topic, on the running stack."""
    async with open_dynamo(settings.dynamodb_endpoint, settings.aws_region) as client:
        await ensure_tables(client, namespace.table_prefix)
    await kafka_create_topics(
        settings.kafka_bootstrap,
        {namespace.topic: namespace.partitions, f"{namespace.topic}.dlq": 1},
    )


async def cleanup(settings: Settings, namespace: Namespace) -> list[str]:
    """Delete the run's tables and topics (best effort): the emulator's file stays small."""
    problems: list[str] = []
    async with open_dynamo(settings.dynamodb_endpoint, settings.aws_region) as client:
        for prefix in (namespace.table_prefix, namespace.baseline_prefix):
            for spec in ALL_TABLES:
                try:
                    await client.delete_table(TableName=table_name(prefix, spec))
                except Exception as exc:
                    if "ResourceNotFound" not in repr(exc):
                        problems.append(f"delete table {table_name(prefix, spec)}: {exc!r}")
    try:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            doomed = [
                t
                for t in (namespace.topic, f"{namespace.topic}.dlq", namespace.baseline_topic)
                if t in existing
            ]
            if doomed:
                await admin.delete_topics(doomed)
        finally:
            await admin.close()
    except Exception as exc:
        problems.append(f"delete topics: {exc!r}")
    return problems


def stack_pids(settings: Settings) -> dict[str, int]:
    """The pids of the stack's services (read from the stack's records; never signalled)."""
    pids: dict[str, int] = {}
    for service in devstack.services(settings):
        pid = service.process.pid()
        if pid is not None:
            pids[service.name] = pid
    return pids
