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
from messaging.identity import api as identity_api
from messaging.identity.adapters.dynamodb_users import DynamoDeviceSessions, DynamoUserDirectory
from messaging.identity.adapters.redis_otp import RedisOtpStore, RedisRateLimiter
from messaging.identity.adapters.senders import DevOtpSender, LogOnlySender
from messaging.identity.otp import OtpCodes, derive_otp_key
from messaging.identity.service import IdentityConfig, IdentityService
from messaging.identity.tokens import JwtTokens
from messaging.infra.dynamodb import DynamoHealth, Retrier, open_client
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
    identity: IdentityService  # identity
    tokens: JwtTokens  # identity: issues and verifies access tokens (a TokenVerifier)


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
        # identity (Redis keys share the deployment's namespace, the table prefix)
        tokens = JwtTokens(settings.jwt_secret, settings.jwt_ttl_seconds)
        dev_sender = (
            DevOtpSender(redis, settings.table_prefix) if settings.otp_sender == "dev" else None
        )
        identity = IdentityService(
            config=IdentityConfig(
                otp_ttl_seconds=settings.otp_ttl_seconds,
                otp_max_attempts=settings.otp_max_attempts,
                otp_requests_per_phone=settings.otp_requests_per_phone_per_window,
                otp_requests_per_address=settings.otp_requests_per_address_per_window,
                rate_window_seconds=settings.otp_rate_window_seconds,
            ),
            codes=OtpCodes(derive_otp_key(settings.jwt_secret)),
            tokens=tokens,
            otps=RedisOtpStore(redis, settings.table_prefix),
            limiter=RedisRateLimiter(redis, settings.table_prefix),
            sender=dev_sender or LogOnlySender(),
            users=DynamoUserDirectory(
                dynamodb, settings.table_prefix, Retrier(settings.dynamodb_deadline_seconds)
            ),
            devices=DynamoDeviceSessions(
                dynamodb, settings.table_prefix, Retrier(settings.dynamodb_deadline_seconds)
            ),
            dev_inbox=dev_sender,
        )
        yield Runtime(
            checks=(KafkaHealth(producer), DynamoHealth(dynamodb), RedisHealth(redis)),
            identity=identity,
            tokens=tokens,
        )


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

    dev_otp = settings.otp_sender == "dev"  # identity: GET /v1/dev/otp only with the dev sender
    operations: list[Operation] = [*identity_api.operations(dev_routes=dev_otp)]
    routes: list[BaseRoute] = [
        *health.routes(lambda: late.get().checks),
        *identity_api.routes(
            lambda: late.get().identity, lambda: late.get().tokens, dev_routes=dev_otp
        ),
        *openapi.routes(operations, version=__version__),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=dict(HANDLERS))
