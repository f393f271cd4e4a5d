"""``messaging stack up|down|status|logs``: the local stack's lifecycle.

``up`` prepares what is missing (first run: Maven download, cargo build), starts each service
that is not already running, waits until each answers its own protocol, then creates the Kafka
topics. On a running stack it changes nothing. ``down`` stops only what the stack started.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

from messaging.devstack.apps import App, HAProxy
from messaging.devstack.process import ManagedProcess, StackError, ensure_port_free
from messaging.devstack.services import (
    DynamoEmulator,
    Kafka,
    Redis,
    Say,
    Service,
    Toxiproxy,
    stage,
)
from messaging.settings import Settings

READY_TIMEOUT_SECONDS = 120.0


def services(settings: Settings) -> list[Service]:
    run_dir = settings.stack_dir / "run"
    log_dir = settings.stack_dir / "logs"

    def proc(name: str) -> ManagedProcess:
        return ManagedProcess(name, run_dir, log_dir)

    return [
        Redis(settings, proc("redis")),
        DynamoEmulator(settings, proc("dynamodb")),
        *(
            Kafka(settings, proc("kafka" if n == 1 else f"kafka-{n}"), n)
            for n in range(1, settings.stack_kafka_brokers + 1)
        ),
        Toxiproxy(settings, proc("toxiproxy")),
        *app_tier(settings),
    ]


def app_tier(settings: Settings) -> list[Service]:
    """The app processes and HAProxy of ``stack up --apps N`` (none when N is 0)."""
    if settings.stack_apps < 1:
        return []
    run_dir = settings.stack_dir / "run"
    log_dir = settings.stack_dir / "logs"
    tier: list[Service] = [
        App(settings, ManagedProcess(f"app-{n}", run_dir, log_dir), n)
        for n in range(1, settings.stack_apps + 1)
    ]
    tier.append(HAProxy(settings, ManagedProcess("haproxy", run_dir, log_dir), settings.stack_apps))
    return tier


def _wait_ready(service: Service, say: Say, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    started = time.monotonic()
    last_note = started
    problem: str | None = "not checked"
    while time.monotonic() - started < timeout:
        if service.process.pid() is None:
            raise StackError(
                f"{service.name} exited during start; last log lines "
                f"({service.process.log_file}):\n{service.process.tail(25)}"
            )
        problem = service.health()
        if problem is None:
            say(f"{service.name}: ready at {service.address()} ({time.monotonic() - started:.1f}s)")
            return
        if time.monotonic() - last_note > 5:
            say(f"{service.name}: waiting ({time.monotonic() - started:.0f}s) ...")
            last_note = time.monotonic()
        time.sleep(0.5)
    raise StackError(
        f"{service.name} not ready after {timeout:.0f}s: {problem}; last log lines "
        f"({service.process.log_file}):\n{service.process.tail(25)}"
    )


PROFILE_FILE = "kafka-brokers"
APPS_FILE = "apps"


def _recorded(settings: Settings, name: str) -> int | None:
    try:
        return int((settings.stack_dir / name).read_text().strip())
    except (OSError, ValueError):
        return None


def recorded_profile(settings: Settings) -> Settings:
    """The settings with the Kafka node count of the stack that runs (``up`` records it), so
    that ``status``, ``down`` and ``logs`` see every node whatever the environment says."""
    brokers = _recorded(settings, PROFILE_FILE)
    if brokers is not None:
        settings = attrs.evolve(settings, stack_kafka_brokers=brokers)
    return recorded_apps(settings)


def recorded_apps(settings: Settings) -> Settings:
    """The settings with the app tier's size as ``stack up --apps N`` recorded it."""
    apps = _recorded(settings, APPS_FILE)
    return settings if apps is None else attrs.evolve(settings, stack_apps=apps)


def up(settings: Settings, say: Say = print) -> None:
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    running = recorded_profile(attrs.evolve(settings, stack_kafka_brokers=0))
    if running.stack_kafka_brokers not in (0, settings.stack_kafka_brokers) and any(
        s.process.pid() for s in services(running) if isinstance(s, Kafka)
    ):
        raise StackError(
            f"the stack runs {running.stack_kafka_brokers} Kafka node(s); "
            f"`messaging stack down` before starting it with {settings.stack_kafka_brokers}"
        )
    (settings.stack_dir / PROFILE_FILE).write_text(f"{settings.stack_kafka_brokers}\n")
    todo: list[Service] = []
    for service in services(attrs.evolve(settings, stack_apps=0)):
        pid = service.process.pid()
        if pid is not None:
            say(f"{service.name}: already running (pid {pid}) at {service.address()}")
            continue
        try:
            service.prepare(say)
        except StackError as exc:
            if not isinstance(service, Toxiproxy):
                raise
            # Only the partition tests need the fault proxy: a machine without Go still runs.
            say(f"{service.name}: skipped ({exc}); the partition tests need it")
            continue
        todo.append(service)
    for service in todo:
        for port, setting in service.ports():
            ensure_port_free(port, setting)
    started = time.monotonic()
    for service in todo:
        say(f"{service.name}: starting on {service.address()}")
        service.start()
    for service in todo:
        _wait_ready(service, say)
    for service in services(settings):
        if isinstance(service, Kafka) and service.node == 1:
            created = service.create_topics()
            if created:
                say(f"kafka: created topics {', '.join(created)}")
    if todo:
        stage(say, "stack start", started)
    up_apps(settings, say)
    say(f"stack up; state and logs in {settings.stack_dir.resolve()}")


def up_apps(settings: Settings, say: Say = print) -> None:
    """Start the app tier of ``settings.stack_apps`` processes behind HAProxy (after the
    services are up); a tier of another size is stopped first, 0 stops it."""
    running = recorded_apps(attrs.evolve(settings, stack_apps=0)).stack_apps
    if running not in (0, settings.stack_apps):
        for service in reversed(app_tier(attrs.evolve(settings, stack_apps=running))):
            if service.process.stop():
                say(f"{service.name}: stopped")
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    (settings.stack_dir / APPS_FILE).write_text(f"{settings.stack_apps}\n")
    tier = app_tier(settings)
    if not tier:
        return
    _ensure_tables(settings, say)
    todo = []
    for service in tier:
        pid = service.process.pid()
        if pid is not None:
            say(f"{service.name}: already running (pid {pid}) at {service.address()}")
            continue
        service.prepare(say)
        todo.append(service)
    for service in todo:
        for port, setting in service.ports():
            ensure_port_free(port, setting)
    started = time.monotonic()
    apps = [s for s in todo if isinstance(s, App)]
    for service in apps:
        say(f"{service.name}: starting on {service.address()}")
        service.start()
    for service in apps:
        _wait_ready(service, say)
    for service in todo:
        if isinstance(service, HAProxy):
            say(f"{service.name}: starting on {service.address()} ({service.config_file})")
            service.start()
            _wait_ready(service, say)
    if todo:
        stage(say, "app tier start", started)
    say(f"serving http://{settings.host}:{settings.port}/ through HAProxy to {len(tier) - 1} apps")


def _ensure_tables(settings: Settings, say: Say) -> None:
    import asyncio

    from messaging.infra.dynamodb import open_dynamo
    from messaging.infra.schema import ensure_tables

    async def run() -> list[str]:
        async with open_dynamo(
            settings.dynamodb_endpoint, settings.aws_region, client=settings.dynamodb_client
        ) as client:
            return await ensure_tables(client, settings.table_prefix)

    created = asyncio.run(run())
    if created:
        say(f"tables: created {', '.join(created)}")


def down(settings: Settings, say: Say = print) -> None:
    for service in reversed(services(settings)):
        if service.process.stop():
            say(f"{service.name}: stopped")
        else:
            say(f"{service.name}: not running")
    # The app tier is not part of the next plain `stack up` (`make run` serves one process).
    (settings.stack_dir / APPS_FILE).unlink(missing_ok=True)


def status(settings: Settings, say: Say = print) -> bool:
    """Print each service's address and health (an app: its open sockets too); True when all
    are healthy."""
    healthy = True
    say(f"{'service':<10} {'address':<28} {'pid':<8} health")
    for service in services(settings):
        pid = service.process.pid()
        if pid is None:
            state = "not running"
            healthy = False
        else:
            problem = service.health()
            state = "ok" if problem is None else f"unhealthy: {problem}"
            healthy = healthy and problem is None
            if isinstance(service, App):
                sockets = service.connections()
                state += f", {'?' if sockets is None else sockets} sockets"
        say(f"{service.name:<10} {service.address():<28} {pid or '-':<8} {state}")
    return healthy


def logs(
    settings: Settings, name: str | None, lines: int, say: Callable[[str], None] = print
) -> None:
    known = {s.name: s for s in services(settings)}
    if name is not None and name not in known:
        raise StackError(f"unknown service {name!r}; choose one of {', '.join(known)}")
    for service in known.values():
        if name in (None, service.name):
            say(f"==> {service.process.log_file} <==")
            say(service.process.tail(lines))


def _service(settings: Settings, name: str) -> Service:
    for service in services(settings):
        if service.name == name:
            return service
    raise StackError(f"unknown service {name!r}")


def stop_service(settings: Settings, name: str) -> bool:
    """Stop one service of the stack (fault injection in tests; ``stack down`` stops all)."""
    return _service(settings, name).process.stop()


def start_service(settings: Settings, name: str, say: Say = print) -> None:
    """Start one stopped service again and wait until it is healthy."""
    service = _service(settings, name)
    if service.process.pid() is not None:
        return
    for port, setting in service.ports():
        ensure_port_free(port, setting)
    service.start()
    _wait_ready(service, say)
