"""The composition root: the only module that knows every adapter.

``create_app(settings)`` returns the Starlette application. Nothing is connected at import or
construction time: the lifespan opens the clients, builds the planes from them, starts the
background loops, and on shutdown undoes all of it in reverse order:

1. (before the lifespan ends, from ``messaging serve``) stop accepting and close every socket
   with 1001 going away: :func:`drain`;
2. let each chat's group committer finish its transaction in flight and write the delivery acks
   still coalescing (ADRs 0024, 0025); then stop the background loops, newest first: the gateway's
   idle sweep, hand-off subscriber, routing refresher, fanout consumer (it finishes the batch in
   hand and commits its offsets), outbox relay (it publishes what it holds);
3. remove this process from the routing table;
4. stop the Kafka consumer and producer, close Redis and the DynamoDB client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from messaging import __version__
from messaging.connection.config import GatewayConfig
from messaging.connection.gateway import Gateway
from messaging.connection.registry import LocalConnections
from messaging.domain.limits import KeyedBuckets, Rate
from messaging.durability import api as durability_api
from messaging.durability.acks import DeliveryAcks
from messaging.durability.adapters.dynamodb_store import DynamoMessageStore, DynamoOutbox
from messaging.durability.adapters.kafka_publisher import KafkaMessagePublisher
from messaging.durability.chats import ChatService
from messaging.durability.config import DurabilityConfig
from messaging.durability.ingest import IngestService
from messaging.durability.outbox import OutboxRelay
from messaging.fanout.adapters.kafka_events import KafkaEventSource
from messaging.fanout.adapters.redis_handoff import RedisHandoff
from messaging.fanout.adapters.redis_routing import RedisRoutes
from messaging.fanout.consumer import FanoutConsumer
from messaging.fanout.service import FanoutService
from messaging.identity import api as identity_api
from messaging.identity.adapters.dynamodb_users import DynamoDeviceSessions, DynamoUserDirectory
from messaging.identity.adapters.redis_otp import RedisOtpStore, RedisRateLimiter
from messaging.identity.adapters.senders import DevOtpSender, LogOnlySender
from messaging.identity.otp import OtpCodes, derive_otp_key
from messaging.identity.service import IdentityConfig, IdentityService
from messaging.identity.tokens import JwtTokens
from messaging.infra.dynamodb import DynamoHealth, Retrier, open_dynamo
from messaging.infra.kafka import KafkaHealth, open_consumer, open_producer
from messaging.infra.redis import RedisHealth, open_redis
from messaging.metrics import Metrics
from messaging.protocol.faults import FaultPoints, NoFaults
from messaging.protocol.frames import WS_PATH
from messaging.protocol.health import HealthCheck
from messaging.protocol.http import Operation
from messaging.settings import Settings
from messaging.web import faults as fault_routes
from messaging.web import health, openapi, pages
from messaging.web import metrics as metrics_routes
from messaging.web.errors import handlers
from messaging.web.faults import ProcessFaults
from messaging.web.guards import AddressRateLimit, SecurityHeaders

log = logging.getLogger(__name__)

DRAIN_SECONDS = 5.0


class BackgroundTasks:
    """Owns the app's background loops. On exit it stops them newest first: the graceful stop
    (if any) within a grace period, then cancellation, and awaits each. A loop that ends on its
    own is a failure: it is logged, and the ``background`` readiness check reports it."""

    name = "background"

    def __init__(self, grace_seconds: float = 5.0) -> None:
        self._grace = grace_seconds
        self._loops: list[tuple[str, asyncio.Task[None], Callable[[], Awaitable[None]] | None]] = []
        self._stopping = False

    def start(
        self,
        name: str,
        loop: Coroutine[Any, Any, None],
        graceful_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        task = asyncio.create_task(loop, name=name)
        task.add_done_callback(self._ended)
        self._loops.append((name, task, graceful_stop))

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not self._stopping and not task.cancelled():
            log.critical("background loop %s ended", task.get_name(), exc_info=task.exception())

    async def check(self) -> None:
        dead = [name for name, task, _ in self._loops if task.done()]
        if dead:
            raise RuntimeError(f"background loop(s) ended: {', '.join(dead)}")

    async def __aenter__(self) -> BackgroundTasks:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stopping = True
        for name, task, graceful_stop in reversed(self._loops):
            if graceful_stop is not None and not task.done():
                try:
                    async with asyncio.timeout(self._grace):
                        await graceful_stop()
                except Exception:
                    log.warning("graceful stop of %s failed", name, exc_info=True)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@attrs.define
class Runtime:
    """Everything the running app holds, built by the lifespan."""

    checks: Sequence[HealthCheck]
    identity: IdentityService  # identity
    tokens: JwtTokens  # identity: issues and verifies access tokens (a TokenVerifier)
    chats: ChatService
    gateway: Gateway


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
async def build_runtime(
    settings: Settings, metrics: Metrics, faults: FaultPoints
) -> AsyncIterator[Runtime]:
    async with AsyncExitStack() as stack:
        dynamodb = await stack.enter_async_context(
            open_dynamo(
                settings.dynamodb_endpoint,
                settings.aws_region,
                client=settings.dynamodb_client,
                timeout_seconds=settings.dynamodb_deadline_seconds,
            )
        )
        redis = await stack.enter_async_context(open_redis(settings.redis_url))
        producer = await stack.enter_async_context(
            open_producer(settings.kafka_bootstrap, client_id=settings.instance_id)
        )
        consumer = await stack.enter_async_context(
            open_consumer(
                settings.kafka_bootstrap,
                (settings.kafka_messages_topic,),
                group_id=settings.kafka_consumer_group,
                client_id=settings.instance_id,
                session_timeout_ms=settings.kafka_session_timeout_ms,
            )
        )

        def observe(what: str, seconds: float, error: str | None) -> None:
            operation = what.split(" ", 1)[0]
            metrics.dynamodb_latency.labels(operation).observe(seconds)
            if error is not None:
                metrics.dynamodb_errors.labels(operation, error).inc()

        retrier = Retrier(settings.dynamodb_deadline_seconds, observe=observe)

        # identity (Redis keys share the deployment's namespace, the table prefix)
        tokens = JwtTokens(settings.jwt_secret, settings.jwt_ttl_seconds)
        dev_sender = (
            DevOtpSender(redis, settings.table_prefix) if settings.otp_sender == "dev" else None
        )
        users = DynamoUserDirectory(dynamodb, settings.table_prefix, retrier)
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
            users=users,
            devices=DynamoDeviceSessions(dynamodb, settings.table_prefix, retrier),
            dev_inbox=dev_sender,
        )

        # durability
        store = DynamoMessageStore(dynamodb, settings.table_prefix, retrier)
        relay = OutboxRelay(
            store,
            DynamoOutbox(dynamodb, settings.table_prefix, retrier),
            KafkaMessagePublisher(producer, settings.kafka_messages_topic),
            metrics,
            repair_after_seconds=settings.outbox_repair_after_seconds,
            sweep_interval_seconds=settings.outbox_sweep_interval_seconds,
        )
        durability_config = DurabilityConfig(
            max_text_bytes=settings.max_text_bytes,
            max_group_members=settings.max_group_members,
            max_chats_per_user=settings.limit_chats_per_user,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            append_deadline_seconds=settings.dynamodb_deadline_seconds,
        )
        ingest = IngestService(store, durability_config, sink=relay, faults=faults)
        chats = ChatService(store, users, durability_config)
        acks = DeliveryAcks(
            store,
            chats.check_ack,
            window_seconds=durability_config.ack_window_seconds,
            pending_limit=durability_config.ack_pending_limit,
        )

        # connection and fanout
        local = LocalConnections(metrics)
        routes = RedisRoutes(
            redis,
            settings.instance_id,
            ttl_seconds=settings.routing_ttl_seconds,
            on_lost=local.suggest_resync,
        )
        handoff = RedisHandoff(redis, settings.instance_id)
        fanout = FanoutConsumer(
            KafkaEventSource(consumer),
            FanoutService(
                chats,
                routes,
                handoff,
                local,
                instance_id=settings.instance_id,
                metrics=metrics,
                faults=faults,
            ),
            metrics,
        )
        gateway = Gateway(
            tokens=tokens,
            sessions=identity,
            ingest=ingest,
            reader=chats,
            acks=acks,
            routes=routes,
            local=local,
            config=GatewayConfig(
                outbound_queue_messages=settings.outbound_queue_messages,
                outbound_queue_bytes=settings.outbound_queue_bytes,
                max_frame_bytes=settings.ws_max_frame_bytes,
                auth_timeout_seconds=settings.ws_auth_timeout_seconds,
                idle_timeout_seconds=settings.ws_idle_timeout_seconds,
                sync_page_size=settings.sync_page_size,
                sends=Rate(settings.limit_sends_per_second, settings.limit_sends_burst),
                syncs=Rate(settings.limit_syncs_per_minute / 60, settings.limit_syncs_per_minute),
                connections_per_user=settings.limit_connections_per_user,
                connections_per_address=settings.limit_connections_per_address,
                allowed_origins=frozenset(settings.allowed_origins),
            ),
            metrics=metrics,
        )

        stack.push_async_callback(routes.clear)
        background = await stack.enter_async_context(BackgroundTasks())
        background.start("outbox-relay", relay.run(), relay.flush)
        background.start("fanout", fanout.run(), fanout.stop)
        background.start("routing-refresh", routes.run())
        background.start("handoff-subscriber", handoff.run_subscriber(local))
        background.start("idle-sweep", gateway.sweep_idle())
        # Unwound first: before the relay's flush and the store client's close.
        stack.push_async_callback(acks.close)
        stack.push_async_callback(ingest.close)
        yield Runtime(
            checks=(
                KafkaHealth(producer),
                DynamoHealth(dynamodb),
                RedisHealth(redis),
                background,
                routes,
            ),
            identity=identity,
            tokens=tokens,
            chats=chats,
            gateway=gateway,
        )


def create_app(settings: Settings) -> Starlette:
    late = _Late()
    metrics = Metrics()
    process_faults = ProcessFaults() if settings.fault_hooks else None
    faults: FaultPoints = process_faults or NoFaults()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with build_runtime(settings, metrics, faults) as runtime:
            late.set(runtime)
            log.info(
                "instance %s ready on %s:%s", settings.instance_id, settings.host, settings.port
            )
            try:
                yield
            finally:
                late.set(None)

    async def websocket(ws: WebSocket) -> None:
        await late.get().gateway.handle(ws)

    dev_otp = settings.otp_sender == "dev"  # identity: GET /v1/dev/otp only with the dev sender
    operations: list[Operation] = [
        *identity_api.operations(dev_routes=dev_otp),
        *durability_api.OPERATIONS,
    ]
    routes: list[BaseRoute] = [
        *health.routes(lambda: late.get().checks, settings.instance_id),
        *metrics_routes.routes(metrics.registry),
        *identity_api.routes(
            lambda: late.get().identity, lambda: late.get().tokens, dev_routes=dev_otp
        ),
        *durability_api.routes(lambda: late.get().chats, lambda: late.get().tokens),
        WebSocketRoute(WS_PATH, websocket),
        *openapi.routes(operations, version=__version__),
        *pages.routes(),
    ]
    if process_faults is not None:
        routes.extend(fault_routes.routes(process_faults))
    middleware = [Middleware(SecurityHeaders)]
    if settings.allowed_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.allowed_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            )
        )
    rest_limit = Rate(
        settings.limit_rest_per_second_per_address, settings.limit_rest_burst_per_address
    )
    middleware.append(
        Middleware(
            AddressRateLimit,
            buckets=KeyedBuckets(rest_limit, time.monotonic),
            on_reject=metrics.limit_rejections.labels("rest_per_address").inc,
        )
    )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers=handlers(lambda limit: metrics.limit_rejections.labels(limit).inc()),
    )

    async def drain() -> None:
        try:
            runtime = late.get()
        except RuntimeError:
            return
        await runtime.gateway.drain(DRAIN_SECONDS)

    app.state.drain = drain
    return app
