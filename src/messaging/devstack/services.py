"""The three external services of the local stack, each behind the same small interface.

Every service knows how to get its software (Maven jars, a cargo-built binary, a Debian package),
how to start on 127.0.0.1 with state under the stack folder, and how to tell whether it is healthy
by speaking its own protocol (a Kafka metadata request, a DynamoDB ``ListTables``, a Redis
``PING``), not merely by a port being open.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Protocol

import attrs

from messaging.devstack.process import ManagedProcess, StackError, port_open
from messaging.settings import Settings, env_var

Say = Callable[[str], None]

KAFKA_VERSION = "4.1.1"
DYNOXIDE_VERSION = "3.2.0"
DYNOXIDE_MIN_RUST = "1.88"  # dynoxide-rs 3.2.0's rust-version
TOXIPROXY_VERSION = "2.12.0"
TOXIPROXY_MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"


def cache_root() -> Path:
    """Downloads and builds shared by every checkout on this machine (never committed)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "messaging-lab"


class Service(Protocol):
    process: ManagedProcess

    @property
    def name(self) -> str: ...

    def address(self) -> str: ...
    def ports(self) -> list[tuple[int, str]]:
        """The ports it will listen on, each with the setting that moves it."""
        ...

    def prepare(self, say: Say) -> None: ...
    def start(self) -> None: ...
    def health(self) -> str | None:
        """None when healthy, else what is wrong."""
        ...


@attrs.define
class Fold:
    """A build tool's chatter folded into a count: lines matching ``counted`` are counted and
    shown as one line every ``every`` of them; other lines are shown only when they match
    ``shown`` (warnings, errors, the end). The full output stays in the error on failure."""

    label: str
    counted: re.Pattern[str]
    shown: re.Pattern[str]
    every: int
    count: int = 0
    started: float = attrs.field(factory=time.monotonic)

    def feed(self, line: str) -> str | None:
        if self.counted.search(line):
            self.count += 1
            return self.progress() if self.count % self.every == 0 else None
        return line if self.shown.search(line) else None

    def progress(self) -> str:
        return f"  {self.count} {self.label} ({time.monotonic() - self.started:.0f}s)"


def maven_fold() -> Fold:
    """Maven -B prints two lines per file it fetches (hundreds on a first run)."""
    return Fold(
        "files fetched from Maven Central",
        counted=re.compile(r"^(\[INFO\] )?Downloaded from \S+: "),
        shown=re.compile(r"^\[(WARNING|ERROR)\]|BUILD (SUCCESS|FAILURE)"),
        every=100,
    )


def cargo_fold() -> Fold:
    """cargo prints one line per crate downloaded and one per crate compiled."""
    return Fold(
        "crates compiled",
        counted=re.compile(r"^\s*Compiling \S+ v"),
        shown=re.compile(r"^\s*(error\b|Finished |Installed |Replaced )"),
        every=25,
    )


def go_fold() -> Fold:
    """``go install`` prints one line per module it downloads."""
    return Fold(
        "Go modules fetched",
        counted=re.compile(r"^go: downloading "),
        shown=re.compile(r"^(go: .*(error|cannot|invalid)|# )"),
        every=10,
    )


def stage(say: Say, name: str, started: float) -> None:
    """One line per first-run stage with its elapsed time (README, "First run")."""
    elapsed = time.monotonic() - started
    minutes, seconds = divmod(round(elapsed), 60)
    say(f"== {name}: {f'{minutes}m{seconds:02d}s' if minutes else f'{seconds}s'}")


def _run_streaming(
    argv: list[str],
    say: Say,
    *,
    what: str,
    fold: Fold,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    say(f"{what}: {' '.join(argv)}")
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-30:], line]
        shown = fold.feed(line) if line else None
        if shown is not None:
            say(shown)
    if fold.count % fold.every:
        say(fold.progress())
    if proc.wait() != 0:
        raise StackError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def _require(tool: str, how: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"{tool} not found on PATH: {how}")
    return path


# --------------------------------------------------------------------------- Kafka


@attrs.define
class Kafka:
    """One KRaft node (broker and controller in one process). The default profile is one node;
    the replicated profile (``MESSAGING_STACK_KAFKA_BROKERS=3``, ADR 0029) runs three, node n
    on the Kafka ports + 2(n-1), with a static three-voter controller quorum."""

    settings: Settings
    process: ManagedProcess
    node: int = 1

    @property
    def name(self) -> str:
        return "kafka" if self.node == 1 else f"kafka-{self.node}"

    @property
    def brokers(self) -> int:
        return self.settings.stack_kafka_brokers

    @property
    def libs(self) -> Path:
        return cache_root() / f"kafka-{KAFKA_VERSION}" / "libs"

    @property
    def data_dir(self) -> Path:
        if self.brokers == 1:
            return self.settings.stack_dir / "kafka-data"
        return self.settings.stack_dir / f"kafka{self.brokers}-data" / f"node-{self.node}"

    @property
    def port(self) -> int:
        return kafka_port(self.settings, self.node)

    @property
    def controller_port(self) -> int:
        return kafka_controller_port(self.settings, self.node)

    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def prepare(self, say: Say) -> None:
        _require("java", "install a Java 17 runtime (apt-get install -y openjdk-17-jre-headless)")
        marker = self.libs / ".complete"
        if marker.exists():
            return
        mvn = _require("mvn", "install Maven (apt-get install -y maven)")
        pom = resources.files("messaging.devstack").joinpath("kafka-pom.xml")
        started = time.monotonic()
        with resources.as_file(pom) as pom_path:
            say(
                f"== kafka fetch: Apache Kafka {KAFKA_VERSION}'s jars from Maven Central "
                "(first run only)"
            )
            _run_streaming(
                [
                    mvn,
                    "-B",
                    "-f",
                    str(pom_path),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={self.libs}",
                ],
                say,
                what="maven",
                fold=maven_fold(),
            )
        marker.write_text(KAFKA_VERSION + "\n")
        stage(say, "kafka fetch", started)

    def ports(self) -> list[tuple[int, str]]:
        return [
            (self.port, env_var("stack_kafka_port")),
            (self.controller_port, env_var("stack_kafka_controller_port")),
            *((listen, env_var("stack_kafka_proxy_listeners")) for listen, _ in self._proxied()),
            *(
                (kafka_peer_listener_port(self.settings, self.node, s), env_var(PEER_SETTING))
                for s in range(1, self.brokers + 1)
                if self._peers()
            ),
        ]

    def _proxied(self) -> tuple[tuple[int, int], ...]:
        """The fault-proxy listeners (ADR 0028): on the single node only."""
        return self.settings.stack_kafka_proxy_listeners if self.brokers == 1 else ()

    def _listeners(self) -> list[str]:
        """``listeners``, ``advertised.listeners`` and ``listener.security.protocol.map``."""
        proxied = self._proxied()
        names = [f"PROXY{n}" for n in range(1, len(proxied) + 1)]
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        listeners += [f"{name}://127.0.0.1:{p[0]}" for name, p in zip(names, proxied, strict=True)]
        advertised = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        advertised += [f"{name}://127.0.0.1:{p[1]}" for name, p in zip(names, proxied, strict=True)]
        protocols = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
        protocols += [f"{name}:PLAINTEXT" for name in names]
        if self._peers():
            # Replication through the fault proxy (ADR 0037): listener Rs is where node s's
            # replica fetchers reach this node; it advertises the proxy path s -> this node.
            for source in range(1, self.brokers + 1):
                listen = kafka_peer_listener_port(self.settings, self.node, source)
                via = {p.source: p.listen_port for p in self._peers() if p.kind == "broker"}
                listeners.append(f"R{source}://127.0.0.1:{listen}")
                advertised.append(f"R{source}://127.0.0.1:{via.get(source, listen)}")
                protocols.append(f"R{source}:PLAINTEXT")
        return [
            "listeners=" + ",".join([*listeners, f"CONTROLLER://127.0.0.1:{self.controller_port}"]),
            "advertised.listeners=" + ",".join(advertised),
            "listener.security.protocol.map=" + ",".join(protocols),
        ]

    def _peers(self) -> list[PeerPath]:
        """The proxy paths that end at this node (ADR 0037); none unless the setting is on."""
        return [p for p in kafka_peer_paths(self.settings) if p.target == self.node]

    def _quorum(self) -> str:
        if self.brokers == 1:
            return f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}"
        # Each node reaches the other voters through its own proxy paths when they are on.
        via = {
            p.target: p.listen_port
            for p in kafka_peer_paths(self.settings)
            if p.kind == "controller" and p.source == self.node
        }
        return "controller.quorum.voters=" + ",".join(
            f"{n}@127.0.0.1:{via.get(n, kafka_controller_port(self.settings, n))}"
            for n in range(1, self.brokers + 1)
        )

    def _properties(self) -> Path:
        replicas = min(self.brokers, 3)
        min_isr = 2 if replicas >= 3 else 1
        if self.brokers == 1:
            path = self.settings.stack_dir / "kafka.properties"
        else:
            path = self.settings.stack_dir / f"kafka{self.brokers}-node-{self.node}.properties"
        inter_broker = f"R{self.node}" if self._peers() else "PLAINTEXT"
        path.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node}",
                    self._quorum(),
                    *self._listeners(),
                    "controller.listener.names=CONTROLLER",
                    f"inter.broker.listener.name={inter_broker}",
                    f"log.dirs={self.data_dir.resolve()}",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
                    f"default.replication.factor={replicas}",
                    f"min.insync.replicas={min_isr}",
                    f"offsets.topic.replication.factor={replicas}",
                    "offsets.topic.num.partitions=8",
                    f"transaction.state.log.replication.factor={replicas}",
                    f"transaction.state.log.min.isr={min_isr}",
                    f"share.coordinator.state.topic.replication.factor={replicas}",
                    f"share.coordinator.state.topic.min.isr={min_isr}",
                    "group.initial.rebalance.delay.ms=0",
                    # Lets consumers use short session timeouts, so a killed app process's
                    # partitions move to the others within seconds (ADR 0006).
                    "group.min.session.timeout.ms=1000",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )
        return path

    def _java(self, main: str, *args: str) -> list[str]:
        log_config = resources.files("messaging.devstack").joinpath("kafka-log4j2.properties")
        return [
            "java",
            "-Xms256m",
            "-Xmx768m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log_config}",
            "-cp",
            str(self.libs / "*"),
            main,
            *args,
        ]

    def start(self) -> None:
        properties = self._properties()
        if not (self.data_dir / "meta.properties").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cluster_id = _cluster_id(self.data_dir.parent / "cluster-id", fresh=self.brokers == 1)
            standalone = ["--standalone"] if self.brokers == 1 else []
            result = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    *standalone,
                    # One argv word: an id starting with "-" would read as an option.
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(properties),
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise StackError(f"kafka storage format failed:\n{result.stdout}{result.stderr}")
        self.process.start(self._java("kafka.Kafka", str(properties)))

    def health(self) -> str | None:
        return asyncio.run(kafka_probe(self.address()))

    def create_topics(self) -> list[str]:
        return asyncio.run(
            kafka_create_topics(
                self.address(),
                self.settings.kafka_topics,
                brokers=self.settings.stack_kafka_brokers,
            )
        )


def kafka_port(settings: Settings, node: int) -> int:
    """The client port of KRaft node ``node`` (1-based)."""
    return settings.stack_kafka_port + 2 * (node - 1)


def kafka_controller_port(settings: Settings, node: int) -> int:
    return settings.stack_kafka_controller_port + 2 * (node - 1)


PEER_SETTING = "stack_kafka_peer_proxy_port"


@attrs.frozen
class PeerPath:
    """The path from one node of the replicated profile to another through Toxiproxy (ADR
    0037): ``broker`` carries the source's replica fetches from the target, ``controller`` its
    controller-quorum and broker-to-controller traffic to the target. Toxiproxy listens on
    ``listen_port`` and forwards to ``upstream_port`` on the target."""

    source: int
    target: int
    kind: str
    listen_port: int
    upstream_port: int

    @property
    def name(self) -> str:
        return f"kafka{self.source}-to-{self.target}-{self.kind}"


def kafka_peer_listener_port(settings: Settings, node: int, source: int) -> int:
    """The port on which ``node`` listens for node ``source``'s replica fetches (listener
    R<source>); the block of ``stack_kafka_peer_proxy_port`` starts with these."""
    n = settings.stack_kafka_brokers
    return settings.stack_kafka_peer_proxy_port + n * (node - 1) + (source - 1)


def kafka_peer_paths(settings: Settings) -> list[PeerPath]:
    """Every ordered pair of distinct nodes' two paths, when the setting is on (else none)."""
    n = settings.stack_kafka_brokers
    base = settings.stack_kafka_peer_proxy_port
    if not base or n == 1:
        return []
    paths = []
    for source in range(1, n + 1):
        for target in range(1, n + 1):
            if source == target:
                continue
            slot = n * (source - 1) + (target - 1)
            paths.append(
                PeerPath(
                    source,
                    target,
                    "broker",
                    base + n * n + slot,
                    kafka_peer_listener_port(settings, target, source),
                )
            )
            paths.append(
                PeerPath(
                    source,
                    target,
                    "controller",
                    base + 2 * n * n + slot,
                    kafka_controller_port(settings, target),
                )
            )
    return paths


def _kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Like Kafka's own ``Uuid.randomUuid``, never one that starts with "-": kafka-storage's
    argument parser took such an id for an option and refused to format (one CI run in 64)."""
    import base64

    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _cluster_id(id_file: Path, *, fresh: bool) -> str:
    """The cluster id in ``id_file``, one for every node of a profile (kept beside their data
    dirs); ``fresh`` draws a new one for the single node.

    The replicated profile's nodes start at once, in threads: each offers an id and the first
    to link its offer wins, so every node formats with the same one. (Checking for the file
    and then writing it let two nodes format with different ids; the odd one never joined the
    quorum, and the scenario waited 120 s for it in one CI run.)"""
    if fresh:
        cluster_id = _kafka_uuid()
        id_file.write_text(cluster_id)
        return cluster_id
    offer = id_file.with_name(f"{id_file.name}.{os.getpid()}.{uuid.uuid4().hex}")
    offer.write_text(_kafka_uuid())
    try:
        os.link(offer, id_file)
    except FileExistsError:
        pass
    finally:
        offer.unlink()
    return id_file.read_text().strip()


async def kafka_probe(bootstrap: str, timeout_seconds: float = 3.0) -> str | None:
    from aiokafka.admin import AIOKafkaAdminClient

    host, _, port = bootstrap.rpartition(":")
    if not port_open(int(port), host):
        return f"nothing listens on {bootstrap} yet"
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_seconds * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_seconds)
        await asyncio.wait_for(admin.list_topics(), timeout_seconds)
        return None
    except Exception as exc:
        return f"no metadata answer from {bootstrap}: {exc!r}"
    finally:
        await admin.close()


async def kafka_create_topics(
    bootstrap: str, topics: dict[str, int], *, brokers: int | None = None
) -> list[str]:
    """The topics that were missing, created (``messaging.infra.kafka.ensure_topics``: the
    same code as ``messaging db init``, replicated where the cluster can, ADR 0029); with
    ``brokers``, once that many have registered and replicated for that size."""
    from messaging.infra.kafka import ensure_topics

    return list((await ensure_topics(bootstrap, topics, brokers=brokers)).created)


# --------------------------------------------------------------------------- DynamoDB API


@attrs.define
class DynamoEmulator:
    settings: Settings
    process: ManagedProcess
    name: str = "dynamodb"

    def address(self) -> str:
        return f"http://127.0.0.1:{self.settings.stack_dynamodb_port}"

    def ports(self) -> list[tuple[int, str]]:
        return [(self.settings.stack_dynamodb_port, env_var("stack_dynamodb_port"))]

    @property
    def dynoxide_root(self) -> Path:
        return cache_root() / f"dynoxide-{DYNOXIDE_VERSION}"

    def _dynoxide(self) -> Path:
        return self.dynoxide_root / "bin" / "dynoxide"

    def prepare(self, say: Say) -> None:
        if self.settings.dynamodb_emulator == "moto":
            return
        if self._dynoxide().exists():
            return
        cargo = _require("cargo", "install Rust (rustup) to build the dynoxide DynamoDB emulator")
        started = time.monotonic()
        say(
            f"== dynoxide build: dynoxide {DYNOXIDE_VERSION} with cargo "
            "(first run only; 2 to 4 min on 2 cores)"
        )
        _run_streaming(
            [
                cargo,
                "install",
                "dynoxide-rs",
                "--version",
                DYNOXIDE_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "native-sqlite,http-server,cli",
                "--root",
                str(self.dynoxide_root),
            ],
            say,
            what="cargo",
            fold=cargo_fold(),
        )
        stage(say, "dynoxide build", started)

    def start(self) -> None:
        port = self.settings.stack_dynamodb_port
        if self.settings.dynamodb_emulator == "moto":
            argv = [sys.executable, "-m", "messaging.devstack.moto_server", "--port", str(port)]
        else:
            data = self.settings.stack_dir / "dynamodb"
            data.mkdir(parents=True, exist_ok=True)
            argv = [
                str(self._dynoxide()),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--db-path",
                str((data / "dynoxide.sqlite").resolve()),
            ]
        self.process.start(argv)

    def health(self) -> str | None:
        return asyncio.run(dynamodb_probe(self.address(), self.settings.aws_region))


async def dynamodb_probe(endpoint: str, region: str, timeout_seconds: float = 3.0) -> str | None:
    from messaging.infra.dynamodb import open_client

    try:
        async with open_client(endpoint, region, timeout_seconds=timeout_seconds) as client:
            await asyncio.wait_for(client.list_tables(Limit=1), timeout_seconds)
        return None
    except Exception as exc:
        return f"no ListTables answer from {endpoint}: {exc!r}"


# --------------------------------------------------------------------------- Redis


@attrs.define
class Redis:
    settings: Settings
    process: ManagedProcess
    name: str = "redis"

    def address(self) -> str:
        return f"redis://127.0.0.1:{self.settings.stack_redis_port}/0"

    def ports(self) -> list[tuple[int, str]]:
        return [(self.settings.stack_redis_port, env_var("stack_redis_port"))]

    def prepare(self, say: Say) -> None:
        _require(
            "redis-server", "install it with: apt-get update && apt-get install -y redis-server"
        )

    def start(self) -> None:
        port = self.settings.stack_redis_port
        work = self.settings.stack_dir / "redis"
        work.mkdir(parents=True, exist_ok=True)
        # Ephemeral only: no RDB snapshots, no AOF. A restart starts empty by design.
        self.process.start(
            [
                _require("redis-server", "apt-get install -y redis-server"),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(work.resolve()),
            ]
        )

    def health(self) -> str | None:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.settings.stack_redis_port), 2) as s:
                s.sendall(b"PING\r\n")
                answer = s.recv(64)
        except OSError as exc:
            return f"no answer from {self.address()}: {exc}"
        return None if answer.startswith(b"+PONG") else f"unexpected answer {answer!r}"


# --------------------------------------------------------------------------- Toxiproxy


@attrs.define
class Toxiproxy:
    """Shopify's TCP fault proxy (ADR 0028): tests route an app process's paths through it and
    cut or degrade one path while both ends stay up. Built once with ``go install`` from the Go
    module proxy into the cache, like dynoxide with cargo. It holds no proxy until a test makes
    one, so it costs nothing to a ``make run`` that never uses it."""

    settings: Settings
    process: ManagedProcess
    name: str = "toxiproxy"

    def address(self) -> str:
        return f"http://127.0.0.1:{self.settings.stack_toxiproxy_port}"

    def ports(self) -> list[tuple[int, str]]:
        return [(self.settings.stack_toxiproxy_port, env_var("stack_toxiproxy_port"))]

    @property
    def root(self) -> Path:
        return cache_root() / f"toxiproxy-{TOXIPROXY_VERSION}"

    def binary(self) -> Path:
        return self.root / "bin" / "server"

    def prepare(self, say: Say) -> None:
        if self.binary().exists():
            return
        go = _require("go", "install Go 1.22 or newer to build Toxiproxy (the fault proxy)")
        started = time.monotonic()
        say(f"== toxiproxy build: {TOXIPROXY_VERSION} with go install (first run only, ~1 min)")
        env = {**os.environ, "GOBIN": str((self.root / "bin").resolve()), "GOFLAGS": "-mod=mod"}
        _run_streaming(
            [go, "install", f"{TOXIPROXY_MODULE}@v{TOXIPROXY_VERSION}"],
            say,
            what="go",
            fold=go_fold(),
            env=env,
        )
        stage(say, "toxiproxy build", started)

    def start(self) -> None:
        self.process.start(
            [
                str(self.binary()),
                "-host",
                "127.0.0.1",
                "-port",
                str(self.settings.stack_toxiproxy_port),
            ]
        )

    def health(self) -> str | None:
        import urllib.request

        try:
            with urllib.request.urlopen(self.address() + "/version", timeout=2) as answer:
                return None if answer.status == 200 else f"/version answered {answer.status}"
        except OSError as exc:
            return f"no answer from {self.address()}: {exc}"
