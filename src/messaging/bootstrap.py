"""The composition root: the only module that knows every adapter.

``create_app(settings)`` returns the Starlette application. Nothing is connected at import or
construction time: the lifespan opens the clients, builds the planes' services from them, starts
the background tasks, and on shutdown undoes all of it in reverse order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import attrs
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from messaging import __version__
from messaging.infra.dynamodb import DynamoHealth, open_client
from messaging.infra.kafka import KafkaHealth, open_producer
from messaging.infra.redis import RedisHealth, open_redis
from messaging.protocol.health import HealthCheck
from messaging.protocol.http import Operation
from messaging.settings import Settings
from messaging.web import health, openapi
from messaging.web.errors import HANDLERS

log = logging.getLogger(__name__)


@attrs.define
class Runtime:
    """Everything the running app holds, built by the lifespan."""

    checks: Sequence[HealthCheck]


class _Late:
    """The runtime, once the lifespan has built it; routes read it through ``get``."""

    def __init__(self) -> None:
        self._runtime: Runtime | None = None

    def get(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("the app's lifespan has not started")
        return self._runtime

    def set(self, runtime: Runtime | None) -> None:
        self._runtime = runtime


@asynccontextmanager
async def build_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with AsyncExitStack() as stack:
        dynamodb = await stack.enter_async_context(
            open_client(
                settings.dynamodb_endpoint,
                settings.aws_region,
                timeout_seconds=settings.dynamodb_deadline_seconds,
            )
        )
        redis = await stack.enter_async_context(open_redis(settings.redis_url))
        producer = await stack.enter_async_context(
            open_producer(settings.kafka_bootstrap, client_id=settings.instance_id)
        )
        yield Runtime(checks=(KafkaHealth(producer), DynamoHealth(dynamodb), RedisHealth(redis)))


def create_app(settings: Settings) -> Starlette:
    late = _Late()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with build_runtime(settings) as runtime:
            late.set(runtime)
            log.info(
                "instance %s ready on %s:%s", settings.instance_id, settings.host, settings.port
            )
            try:
                yield
            finally:
                late.set(None)

    operations: list[Operation] = []
    routes: list[BaseRoute] = [
        *health.routes(lambda: late.get().checks),
        *openapi.routes(operations, version=__version__),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=dict(HANDLERS))
