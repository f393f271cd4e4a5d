"""Integration fixtures: the real local stack, prepared once per session.

``make test`` runs ``messaging stack up`` first. If the stack is not reachable the tests fail
with a message saying so: they never skip, since a skipped integration test proves nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from messaging.devstack.services import dynamodb_probe, kafka_create_topics, kafka_probe
from messaging.infra.dynamodb import DynamoDBClient, open_client, open_dynamo
from messaging.infra.schema import ensure_tables
from messaging.settings import Settings, env_var, lifted_limits_env
from tests.harness import AppProcess
from tests.integration.raw import OPEN


def app_env(settings: Settings) -> dict[str, str]:
    """The environment that makes an app process use this session's tables and topic."""
    return {
        env_var("env"): settings.env,
        env_var("table_prefix"): settings.table_prefix,
        env_var("kafka_messages_topic"): settings.kafka_messages_topic,
        env_var("kafka_consumer_group"): settings.kafka_consumer_group,
        env_var("fault_hooks"): "true",
        # Every test client comes from 127.0.0.1 and tests send fast: lift the abuse limits
        # for the shared app processes (the limits' own tests start apps with low limits).
        **lifted_limits_env(),
        env_var("ws_auth_timeout_seconds"): "1",
        # Routing refreshes every second, so a Redis flush heals within about a second.
        env_var("routing_ttl_seconds"): "3",
    }


async def prepare_stack(settings: Settings) -> Settings:
    """Fail unless the stack answers; create the session's tables and topic."""
    problems = [
        await kafka_probe(settings.kafka_bootstrap),
        await dynamodb_probe(settings.dynamodb_endpoint, settings.aws_region),
    ]
    problems = [p for p in problems if p]
    if problems:
        pytest.fail("the local stack is not up (run `messaging stack up`): " + "; ".join(problems))
    async with open_dynamo(settings.dynamodb_endpoint, settings.aws_region) as client:
        await ensure_tables(client, settings.table_prefix)
    await kafka_create_topics(
        settings.kafka_bootstrap,
        settings.kafka_topics,
    )
    return settings


@pytest.fixture(scope="session")
async def stack(base_settings: Settings) -> Settings:
    return await prepare_stack(base_settings)


@pytest.fixture
async def dynamodb(stack: Settings) -> AsyncIterator[DynamoDBClient]:
    async with open_client(stack.dynamodb_endpoint, stack.aws_region) as client:
        yield client


@pytest.fixture(autouse=True)
async def close_leftover_sockets() -> AsyncIterator[None]:
    yield
    for socket in list(OPEN):
        await socket.close()


@pytest.fixture(scope="session")
def apps(stack: Settings) -> Iterator[list[AppProcess]]:
    """Two app processes on different ports, sharing the stack."""
    processes = [AppProcess(f"app{i}", app_env(stack)).start() for i in (1, 2)]
    yield processes
    for process in processes:
        process.terminate()


@pytest.fixture
def extra_app(stack: Settings, request: pytest.FixtureRequest) -> Iterator[AppProcess]:
    """A third app process in the same consumer group, with its own settings."""
    overrides: dict[str, str] = getattr(request, "param", {})
    app = AppProcess(f"extra-{request.node.name[:20]}", {**app_env(stack), **overrides}).start()
    yield app
    app.kill()
