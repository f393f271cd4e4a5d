"""Scenario fixtures: two app processes of their own, a private topic and consumer group.

The scenario apps publish to and consume from their own topic and consumer group (not the
integration suite's), so that which process consumes which partition, and what a killed
process leaves uncommitted, depends on these two processes only. Tables are the session's.

The long nemesis run (marker ``nemesis_long``) is deselected unless asked for: ``-m
nemesis_long`` (or any ``-m`` naming it), or ``MESSAGING_TEST_NEMESIS_SECONDS`` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path as FsPath

import attrs
import pytest

from messaging.devstack import stack
from messaging.devstack.services import Kafka, kafka_create_topics
from messaging.devstack.toxiproxy import Toxiproxy
from messaging.infra.dynamodb import open_dynamo
from messaging.infra.schema import ensure_tables
from messaging.settings import Settings, env_var
from tests.conftest import RUN_ID
from tests.integration.conftest import app_env, prepare_stack
from tests.scenarios.harness import App, Scenario
from tests.scenarios.partitions import ProxiedApp, free_block


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "nemesis_long" in (config.getoption("-m") or "") or os.environ.get(
        "MESSAGING_TEST_NEMESIS_SECONDS"
    ):
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (drop if item.get_closest_marker("nemesis_long") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
async def scenario_settings(base_settings: Settings) -> Settings:
    settings = attrs.evolve(
        base_settings,
        kafka_messages_topic=f"{base_settings.kafka_messages_topic}-scn",
        kafka_consumer_group=f"{base_settings.kafka_consumer_group}-scn",
    )
    return await prepare_stack(settings)


def scenario_env(settings: Settings, **overrides: str) -> dict[str, str]:
    return {**app_env(settings), **overrides}


@pytest.fixture(scope="session")
async def cluster(scenario_settings: Settings) -> AsyncIterator[list[App]]:
    """Two app processes shared by the scenarios; a scenario that kills one restarts it."""
    apps = [App(f"scn{RUN_ID}-{n}", scenario_env(scenario_settings)) for n in ("a", "b")]
    try:
        await asyncio.gather(*(app.launch() for app in apps))
        yield apps
    finally:
        await asyncio.gather(*(app.stop() for app in apps))


@pytest.fixture
async def scenario(
    scenario_settings: Settings, cluster: list[App], request: pytest.FixtureRequest
) -> AsyncIterator[Scenario]:
    run = Scenario(scenario_settings, cluster, label=request.node.name)
    await run.ensure_ready()
    try:
        yield run
    finally:
        await run.close()
        await run.ensure_ready()


@pytest.fixture
async def isolated(
    scenario_settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[Scenario]:
    """A scenario on two app processes of its own, with their own tables, topic and consumer
    group: a fault that may leave processes damaged (see the Kafka scenario) cannot affect the
    shared ones, which stay idle meanwhile (nothing in their outbox, nothing to publish)."""
    settings = attrs.evolve(
        scenario_settings,
        table_prefix=f"{scenario_settings.table_prefix}iso-",
        kafka_messages_topic=f"{scenario_settings.kafka_messages_topic}-iso",
        kafka_consumer_group=f"{scenario_settings.kafka_consumer_group}-iso",
    )
    async with open_dynamo(settings.dynamodb_endpoint, settings.aws_region) as client:
        await ensure_tables(client, settings.table_prefix)
    await kafka_create_topics(
        settings.kafka_bootstrap,
        settings.kafka_topics,
    )
    apps = [App(f"scn{RUN_ID}-iso-{n}", scenario_env(settings)) for n in ("a", "b")]
    run = Scenario(settings, apps, label=request.node.name)
    try:
        await asyncio.gather(*(app.launch() for app in apps))
        yield run
    finally:
        await run.close()
        await asyncio.gather(*(app.sigkill() for app in apps))
        await run.ensure_services()


@attrs.define
class Network:
    """A scenario whose two app processes reach the stack and their clients through proxies."""

    scenario: Scenario
    proxy: Toxiproxy
    apps: list[ProxiedApp]


@contextlib.asynccontextmanager
async def proxied_network(
    scenario_settings: Settings,
    label: str,
    tag: str,
    overrides: Mapping[str, str],
    kafka_dir: FsPath | None = None,
) -> AsyncIterator[Network]:
    """Two proxied app processes (own tables, topic and consumer group, named by ``tag``).

    With ``kafka_dir``, a Kafka node of their own (alternate ports, that private stack
    directory) with one extra listener per process (``MESSAGING_STACK_KAFKA_PROXY_LISTENERS``,
    ADR 0028), each advertising a Toxiproxy path that forwards to it: each process bootstraps
    through its own path, ``app.paths["kafka"]``, so every Kafka byte it exchanges crosses it.
    Without, they reach the shared stack's Kafka directly."""
    settings = attrs.evolve(
        scenario_settings,
        table_prefix=f"{scenario_settings.table_prefix}{tag}-",
        kafka_messages_topic=f"{scenario_settings.kafka_messages_topic}-{tag}",
        kafka_consumer_group=f"{scenario_settings.kafka_consumer_group}-{tag}",
    )
    listeners: tuple[tuple[int, int], ...] = ()
    node: Kafka | None = None
    if kafka_dir is not None:
        base = free_block(6)
        listeners = ((base + 2, base + 4), (base + 3, base + 5))
        settings = attrs.evolve(
            settings,
            stack_kafka_brokers=1,
            stack_kafka_port=base,
            stack_kafka_controller_port=base + 1,
            stack_kafka_proxy_listeners=listeners,
            kafka_bootstrap=f"127.0.0.1:{base}",
        )
        # The node's pid file and data in the private directory; the scenario keeps the shared
        # stack's (its ``ensure_services`` must see the shared services running).
        node_settings = attrs.evolve(settings, stack_dir=kafka_dir)
        (node,) = [s for s in stack.services(node_settings) if isinstance(s, Kafka)]
    proxy = Toxiproxy(f"http://127.0.0.1:{settings.stack_toxiproxy_port}")
    apps = [
        ProxiedApp(
            f"scn{RUN_ID}-{tag}-{n}",
            scenario_env(
                settings,
                **overrides,
                **({env_var("kafka_bootstrap"): f"127.0.0.1:{pair[1]}"} if pair else {}),
            ),
        )
        for n, pair in zip("ab", listeners or (None, None), strict=True)
    ]
    run = Scenario(settings, apps, label=label)
    try:
        if node is not None:
            await asyncio.to_thread(stack.start_service, node_settings, node.name, print)
        await kafka_create_topics(settings.kafka_bootstrap, settings.kafka_topics)
        async with open_dynamo(settings.dynamodb_endpoint, settings.aws_region) as client:
            await ensure_tables(client, settings.table_prefix)
        for app in apps:
            await app.make_paths(proxy, settings)
        for app, (listen, advertised) in zip(apps, listeners, strict=False):
            app.paths["kafka"] = await proxy.path(
                f"{app.name}-kafka", advertised, f"127.0.0.1:{listen}"
            )
        await asyncio.gather(*(app.launch() for app in apps))
        yield Network(run, proxy, apps)
    finally:
        await run.close()
        await asyncio.gather(*(app.sigkill() for app in apps))
        for app in apps:
            await app.remove_paths(proxy)
        await proxy.aclose()
        if node is not None:
            node.process.stop()


@pytest.fixture
async def network(
    scenario_settings: Settings, request: pytest.FixtureRequest, tmp_path: FsPath
) -> AsyncIterator[Network]:
    """Two app processes of their own (own tables, topic and consumer group, as ``isolated``),
    each with its DynamoDB, Redis and client paths through Toxiproxy; overrides of their
    settings come from the test's ``app_settings`` marker. With the ``own_kafka`` marker they
    also reach a Kafka node of their own through a path each (``proxied_network``)."""
    marker = request.node.get_closest_marker("app_settings")
    overrides: dict[str, str] = dict(marker.kwargs) if marker else {}
    own_kafka = request.node.get_closest_marker("own_kafka") is not None
    async with proxied_network(
        scenario_settings,
        request.node.name,
        "netk" if own_kafka else "net",
        overrides,
        tmp_path if own_kafka else None,
    ) as network:
        yield network


@pytest.fixture
async def extra_apps(scenario_settings: Settings) -> AsyncIterator[list[App]]:
    """Dedicated app processes with their own settings: ``extra_apps.append(App(...))`` after
    launching; all are killed at the end."""
    apps: list[App] = []
    try:
        yield apps
    finally:
        await asyncio.gather(*(app.sigkill() for app in apps))
