"""Scenario fixtures: two app processes of their own, a private topic and consumer group.

The scenario apps publish to and consume from their own topic and consumer group (not the
integration suite's), so that which process consumes which partition, and what a killed
process leaves uncommitted, depends on these two processes only. Tables are the session's.

The long nemesis run (marker ``nemesis_long``) is deselected unless asked for: ``-m
nemesis_long`` (or any ``-m`` naming it), or ``MESSAGING_TEST_NEMESIS_SECONDS`` set.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import attrs
import pytest

from messaging.devstack.services import kafka_create_topics
from messaging.devstack.toxiproxy import Toxiproxy
from messaging.infra.dynamodb import open_dynamo
from messaging.infra.schema import ensure_tables
from messaging.settings import Settings
from tests.conftest import RUN_ID
from tests.integration.conftest import app_env, prepare_stack
from tests.scenarios.harness import App, Scenario
from tests.scenarios.partitions import ProxiedApp


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "nemesis_long" in (config.getoption("-m") or "") or os.environ.get(
        "MESSAGING_TEST_NEMESIS_SECONDS"
    ):
        return
    keep, drop = [], []
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


@pytest.fixture
async def network(
    scenario_settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[Network]:
    """Two app processes of their own (own tables, topic and consumer group, as ``isolated``),
    each with its DynamoDB, Redis and client paths through Toxiproxy; overrides of their
    settings come from the test's ``app_settings`` marker."""
    settings = attrs.evolve(
        scenario_settings,
        table_prefix=f"{scenario_settings.table_prefix}net-",
        kafka_messages_topic=f"{scenario_settings.kafka_messages_topic}-net",
        kafka_consumer_group=f"{scenario_settings.kafka_consumer_group}-net",
    )
    async with open_dynamo(settings.dynamodb_endpoint, settings.aws_region) as client:
        await ensure_tables(client, settings.table_prefix)
    await kafka_create_topics(
        settings.kafka_bootstrap,
        settings.kafka_topics,
    )
    marker = request.node.get_closest_marker("app_settings")
    overrides: dict[str, str] = dict(marker.kwargs) if marker else {}
    proxy = Toxiproxy(f"http://127.0.0.1:{settings.stack_toxiproxy_port}")
    apps = [
        ProxiedApp(f"scn{RUN_ID}-net-{n}", scenario_env(settings, **overrides)) for n in ("a", "b")
    ]
    run = Scenario(settings, apps, label=request.node.name)
    try:
        for app in apps:
            await app.make_paths(proxy, settings)
        await asyncio.gather(*(app.launch() for app in apps))
        yield Network(run, proxy, apps)
    finally:
        await run.close()
        await asyncio.gather(*(app.sigkill() for app in apps))
        for app in apps:
            await app.remove_paths(proxy)
        await proxy.aclose()


@pytest.fixture
async def extra_apps(scenario_settings: Settings) -> AsyncIterator[list[App]]:
    """Dedicated app processes with their own settings: ``extra_apps.append(App(...))`` after
    launching; all are killed at the end."""
    apps: list[App] = []
    try:
        yield apps
    finally:
        await asyncio.gather(*(app.sigkill() for app in apps))
