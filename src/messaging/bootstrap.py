"""The composition root: the only module that knows every adapter (ADR 0022).

``create_app(settings)`` returns the Starlette application. Nothing is connected at import or
construction time: the lifespan opens the adapters (:func:`open_adapters`: the clients and every
adapter on them, from settings; a test passes its own factory of fakes), builds the planes'
services from them (:func:`build_services`, no I/O), starts the background loops, and yields
the :class:`Runtime` as the lifespan state that routes read (:func:`runtime_of`). On shutdown it
undoes all of it in reverse order:

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
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any, TypedDict

import attrs
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from messaging import __version__
from messaging.connection.config import GatewayConfig
from messaging.connection.gateway import Gateway
from messaging.connection.registry import LocalConnections
from messaging.domain.limits import KeyedBuckets, Rate
from messaging.domain.model import Message
from messaging.durability import api as durability_api
from messaging.durability.acks import DeliveryAcks
from messaging.durability.adapters.dynamodb_store import DynamoMessageStore, DynamoOutbox
from messaging.durability.adapters.kafka_publisher import KafkaMessagePublisher
from messaging.durability.chats import ChatService
from messaging.durability.config import DurabilityConfig
from messaging.durability.ingest import IngestService
from messaging.durability.outbox import OutboxRelay
from messaging.durability.ports import MessagePublisher, MessageStore, Outbox
from messaging.fanout.adapters.kafka_dead_letters import KafkaDeadLetters, KafkaDeadLetterTopic
from messaging.fanout.adapters.kafka_events import KafkaEventSource
from messaging.fanout.adapters.redis_handoff import RedisHandoff
from messaging.fanout.adapters.redis_routing import RedisRoutes
from messaging.fanout.consumer import FanoutConsumer
from messaging.fanout.direct import DirectFanout
from messaging.fanout.ports import DeadLetters, EventSource, Handoff, HandoffReceiver, RouteTable
from messaging.fanout.service import FanoutService
from messaging.identity import api as identity_api
from messaging.identity.adapters.dynamodb_users import DynamoDeviceSessions, DynamoUserDirectory
from messaging.identity.adapters.redis_otp import RedisOtpStore, RedisRateLimiter
from messaging.identity.adapters.senders import DevOtpSender, LogOnlySender
from messaging.identity.otp import OtpCodes, derive_otp_key
from messaging.identity.ports import (
    DeviceSessions,
    DevOtpInbox,
    OtpSender,
    OtpStore,
    RateLimiter,
    UserDirectory,
)
from messaging.identity.service import IdentityConfig, IdentityService
from messaging.identity.tokens import JwtTokens
from messaging.infra.dynamodb import DynamoHealth, Retrier, StoreLatency, open_dynamo
from messaging.infra.kafka import KafkaHealth, open_consumer, open_producer, open_reader
from messaging.infra.redis import RedisHealth, open_redis
from messaging.metrics import Metrics
from messaging.protocol.delivery import LocalDelivery
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


@attrs.frozen(kw_only=True)
class Adapters:
    """Every port the planes are built on: opened from settings by :func:`open_adapters`, or
    given by a test (tests/unit/test_graph_on_fakes.py passes in-memory fakes)."""

    # durability
    store: MessageStore
    outbox: Outbox
    publisher: MessagePublisher
    # identity (``users`` serves durability's ``UserDirectory`` too)
    users: UserDirectory
    devices: DeviceSessions
    otps: OtpStore
    limiter: RateLimiter
    otp_sender: OtpSender
    dev_inbox: DevOtpInbox | None
    # fanout
    events: EventSource
    routes: RouteTable
    handoff: Handoff
    receiver: HandoffReceiver
    dead_letters: DeadLetters
    checks: tuple[HealthCheck, ...] = ()
    """Readiness of the clients behind the adapters."""


AdapterFactory = Callable[[Settings, Metrics, LocalDelivery], AbstractAsyncContextManager[Adapters]]
"""Opens the adapters for a settings object; ``local`` is told when routing state was lost."""


@attrs.frozen
class _DynamoAdapters:
    store: DynamoMessageStore
    outbox: DynamoOutbox
    users: DynamoUserDirectory
    devices: DynamoDeviceSessions
    health: DynamoHealth
    latency: StoreLatency


@asynccontextmanager
async def _dynamodb_adapters(
    settings: Settings, metrics: Metrics
) -> AsyncIterator[_DynamoAdapters]:
    """The DynamoDB client and every adapter on it."""
    async with open_dynamo(
        settings.dynamodb_endpoint,
        settings.aws_region,
        client=settings.dynamodb_client,
        timeout_seconds=settings.dynamodb_deadline_seconds,
    ) as dynamodb:
        latency = StoreLatency(settings.store_latency_unready_ms / 1000)

        def observe(what: str, seconds: float, error: str | None) -> None:
            latency.observe(what, seconds, error)
            operation = what.split(" ", 1)[0]
            metrics.dynamodb_latency.labels(operation).observe(seconds)
            if error is not None:
                metrics.dynamodb_errors.labels(operation, error).inc()

        retrier = Retrier(settings.dynamodb_deadline_seconds, observe=observe)
        prefix = settings.table_prefix
        yield _DynamoAdapters(
            store=DynamoMessageStore(dynamodb, prefix, retrier),
            outbox=DynamoOutbox(dynamodb, prefix, retrier),
            users=DynamoUserDirectory(dynamodb, prefix, retrier),
            devices=DynamoDeviceSessions(dynamodb, prefix, retrier),
            health=DynamoHealth(dynamodb),
            latency=latency,
        )


@asynccontextmanager
async def open_adapters(
    settings: Settings, metrics: Metrics, local: LocalDelivery
) -> AsyncIterator[Adapters]:
    """The real adapters: DynamoDB, Redis and Kafka clients opened here, closed on exit."""
    async with AsyncExitStack() as stack:
        dynamo = await stack.enter_async_context(_dynamodb_adapters(settings, metrics))
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
        # Redis keys share the deployment's namespace, the table prefix.
        dev_sender = (
            DevOtpSender(redis, settings.table_prefix) if settings.otp_sender == "dev" else None
        )
        handoff = RedisHandoff(redis, settings.instance_id)

        def routing_lost(reason: str) -> None:
            # Redis answers again after an outage, or lost its state: a fresh subscription,
            # then one resync to every local connection once it listens (ADR 0033), so that
            # the clients' syncs start after the last hand-off that could be missed.
            log.info("routing %s: renewing the hand-off subscription", reason)
            handoff.resubscribe()

        yield Adapters(
            store=dynamo.store,
            outbox=dynamo.outbox,
            publisher=KafkaMessagePublisher(producer, settings.kafka_messages_topic),
            users=dynamo.users,
            devices=dynamo.devices,
            otps=RedisOtpStore(redis, settings.table_prefix),
            limiter=RedisRateLimiter(redis, settings.table_prefix),
            otp_sender=dev_sender or LogOnlySender(),
            dev_inbox=dev_sender,
            events=KafkaEventSource(consumer),
            routes=RedisRoutes(
                redis,
                settings.instance_id,
                ttl_seconds=settings.routing_ttl_seconds,
                on_lost=routing_lost,
            ),
            handoff=handoff,
            receiver=handoff,
            dead_letters=KafkaDeadLetters(producer, settings.kafka_dead_letter_topic),
            checks=(KafkaHealth(producer), dynamo.health, dynamo.latency, RedisHealth(redis)),
        )


@asynccontextmanager
async def open_dead_letter_topic(settings: Settings) -> AsyncIterator[KafkaDeadLetterTopic]:
    """The operator's end of the dead-letter topic (``messaging dlq``, ADR 0030)."""
    async with (
        open_producer(settings.kafka_bootstrap, client_id="messaging-dlq") as producer,
        open_reader(settings.kafka_bootstrap, client_id="messaging-dlq") as consumer,
    ):
        yield KafkaDeadLetterTopic(
            consumer, producer, settings.kafka_dead_letter_topic, settings.kafka_messages_topic
        )


def gateway_config(settings: Settings) -> GatewayConfig:
    return GatewayConfig(
        outbound_queue_messages=settings.outbound_queue_messages,
        outbound_queue_bytes=settings.outbound_queue_bytes,
        max_frame_bytes=settings.ws_max_frame_bytes,
        send_deadline_seconds=settings.dynamodb_deadline_seconds,
        auth_timeout_seconds=settings.ws_auth_timeout_seconds,
        idle_timeout_seconds=settings.ws_idle_timeout_seconds,
        sync_page_size=settings.sync_page_size,
        sync_page_bytes=settings.sync_page_bytes,
        sends=Rate(settings.limit_sends_per_second, settings.limit_sends_burst),
        syncs=Rate(settings.limit_syncs_per_minute / 60, settings.limit_syncs_per_minute),
        connections_per_user=settings.limit_connections_per_user,
        connections_per_address=settings.limit_connections_per_address,
        allowed_origins=frozenset(settings.allowed_origins),
    )


def identity_config(settings: Settings) -> IdentityConfig:
    return IdentityConfig(
        otp_ttl_seconds=settings.otp_ttl_seconds,
        otp_max_attempts=settings.otp_max_attempts,
        otp_requests_per_phone=settings.otp_requests_per_phone_per_window,
        otp_requests_per_address=settings.otp_requests_per_address_per_window,
        rate_window_seconds=settings.otp_rate_window_seconds,
    )


def durability_config(settings: Settings) -> DurabilityConfig:
    return DurabilityConfig(
        max_text_bytes=settings.max_text_bytes,
        max_group_members=settings.max_group_members,
        max_chats_per_user=settings.limit_chats_per_user,
        idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
        append_deadline_seconds=settings.dynamodb_deadline_seconds,
    )


@attrs.frozen(kw_only=True)
class Services:
    """The planes' services, built from adapters without I/O."""

    identity: IdentityService
    tokens: JwtTokens
    chats: ChatService
    ingest: IngestService
    acks: DeliveryAcks
    relay: OutboxRelay
    fanout: FanoutConsumer
    direct: DirectFanout
    gateway: Gateway


@attrs.frozen
class _Both:
    """Ingest's sink: the outbox relay, then the direct fanout path (ADR 0033)."""

    relay: OutboxRelay
    direct: DirectFanout

    def submit(self, message: Message) -> None:
        self.relay.submit(message)
        self.direct.submit(message)


def build_services(
    settings: Settings,
    adapters: Adapters,
    local: LocalConnections,
    metrics: Metrics,
    faults: FaultPoints,
) -> Services:
    tokens = JwtTokens(settings.jwt_secret, settings.jwt_ttl_seconds)
    identity = IdentityService(
        config=identity_config(settings),
        codes=OtpCodes(derive_otp_key(settings.jwt_secret)),
        tokens=tokens,
        otps=adapters.otps,
        limiter=adapters.limiter,
        sender=adapters.otp_sender,
        users=adapters.users,
        devices=adapters.devices,
        dev_inbox=adapters.dev_inbox,
    )
    config = durability_config(settings)
    chats = ChatService(adapters.store, adapters.users, config)
    fanout_service = FanoutService(
        chats,
        adapters.routes,
        adapters.handoff,
        local,
        instance_id=settings.instance_id,
        metrics=metrics,
        faults=faults,
    )
    # ADR 0033: while the log path or routing is degraded, just-persisted messages are also
    # fanned out directly (the relay, the consumer and the route table tell; the first two are
    # built below, read late). Routing alone suffices: a process cut from Redis serves its own
    # sockets whatever its consumer holds.
    routes = adapters.routes
    direct = DirectFanout(
        fanout_service,
        lambda: relay.publishing_fails or fanout.failing or routes.degraded,
        metrics,
    )
    relay = OutboxRelay(
        adapters.store,
        adapters.outbox,
        adapters.publisher,
        metrics,
        repair_after_seconds=settings.outbox_repair_after_seconds,
        sweep_interval_seconds=settings.outbox_sweep_interval_seconds,
        on_unpublished=direct.unpublished,
    )
    ingest = IngestService(adapters.store, config, sink=_Both(relay, direct), faults=faults)
    acks = DeliveryAcks(
        adapters.store,
        chats.check_ack,
        window_seconds=config.ack_window_seconds,
        pending_limit=config.ack_pending_limit,
    )
    fanout = FanoutConsumer(
        adapters.events,
        fanout_service,
        adapters.dead_letters,
        metrics,
        max_attempts=settings.fanout_max_attempts,
        max_backoff_seconds=settings.fanout_max_backoff_seconds,
        reorder_window_seconds=settings.fanout_reorder_window_seconds,
        stall_seconds=settings.fanout_stall_ms / 1000,
    )
    gateway = Gateway(
        tokens=tokens,
        sessions=identity,
        ingest=ingest,
        reader=chats,
        acks=acks,
        routes=adapters.routes,
        local=local,
        config=gateway_config(settings),
        metrics=metrics,
    )
    return Services(
        identity=identity,
        tokens=tokens,
        chats=chats,
        ingest=ingest,
        acks=acks,
        relay=relay,
        fanout=fanout,
        direct=direct,
        gateway=gateway,
    )


@attrs.frozen(kw_only=True)
class Runtime:
    """Everything the running app holds, built by the lifespan; routes read it from the
    lifespan state (``request.state.runtime``: :func:`runtime_of`)."""

    checks: Sequence[HealthCheck]
    identity: IdentityService  # identity
    tokens: JwtTokens  # identity: issues and verifies access tokens (a TokenVerifier)
    chats: ChatService
    gateway: Gateway


class State(TypedDict):
    """The lifespan state (Starlette copies it into every request's and socket's ``state``)."""

    runtime: Runtime


def runtime_of(connection: HTTPConnection) -> Runtime:
    runtime = getattr(connection.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise RuntimeError("the app's lifespan has not started")
    return runtime


@asynccontextmanager
async def build_runtime(
    settings: Settings,
    metrics: Metrics,
    faults: FaultPoints,
    open_adapters: AdapterFactory = open_adapters,
) -> AsyncIterator[Runtime]:
    """Open the adapters, build the services on them, run the background loops; on exit stop
    the loops (newest first), clear this process's routes, close the adapters."""
    local = LocalConnections(metrics)
    async with AsyncExitStack() as stack:
        adapters = await stack.enter_async_context(open_adapters(settings, metrics, local))
        services = build_services(settings, adapters, local, metrics, faults)
        stack.push_async_callback(adapters.routes.clear)
        background = await stack.enter_async_context(BackgroundTasks())
        background.start("outbox-relay", services.relay.run(), services.relay.flush)
        background.start("fanout", services.fanout.run(), services.fanout.stop)
        background.start("direct-fanout", services.direct.run())
        background.start("routing-refresh", adapters.routes.run())
        background.start("handoff-subscriber", adapters.receiver.run_subscriber(local))
        background.start("idle-sweep", services.gateway.sweep_idle())
        # Unwound first: before the relay's flush and the store client's close.
        stack.push_async_callback(services.acks.close)
        stack.push_async_callback(services.ingest.close)
        yield Runtime(
            checks=(
                *adapters.checks,
                background,
                adapters.routes,
                services.fanout,
                services.fanout.progress,
            ),
            identity=services.identity,
            tokens=services.tokens,
            chats=services.chats,
            gateway=services.gateway,
        )


def _routes(settings: Settings, metrics: Metrics, faults: ProcessFaults | None) -> list[BaseRoute]:
    """Every route; each reads the running app's services from the lifespan state."""

    async def websocket(ws: WebSocket) -> None:
        await runtime_of(ws).gateway.handle(ws)

    dev_otp = settings.otp_sender == "dev"  # identity: GET /v1/dev/otp only with the dev sender
    operations: list[Operation] = [
        *identity_api.operations(dev_routes=dev_otp),
        *durability_api.OPERATIONS,
    ]
    routes: list[BaseRoute] = [
        *health.routes(lambda request: runtime_of(request).checks, settings.instance_id),
        *metrics_routes.routes(metrics.registry),
        *identity_api.routes(
            lambda request: runtime_of(request).identity,
            lambda request: runtime_of(request).tokens,
            dev_routes=dev_otp,
        ),
        *durability_api.routes(
            lambda request: runtime_of(request).chats, lambda request: runtime_of(request).tokens
        ),
        WebSocketRoute(WS_PATH, websocket),
        *openapi.routes(operations, version=__version__),
        *pages.routes(),
    ]
    if faults is not None:
        routes.extend(fault_routes.routes(faults))
    if not settings.is_production:  # where the fault hooks are allowed (ADR 0032)
        routes.extend(pages.lab_routes())
    return routes


def _middleware(settings: Settings, metrics: Metrics) -> list[Middleware]:
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
    return middleware


def create_app(settings: Settings, *, adapters: AdapterFactory = open_adapters) -> Starlette:
    """The app; ``adapters`` opens its ports (the real ones unless a test gives fakes)."""
    metrics = Metrics()
    process_faults = ProcessFaults() if settings.fault_hooks else None
    faults: FaultPoints = process_faults or NoFaults()

    async def no_drain() -> None:
        return None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with build_runtime(settings, metrics, faults, adapters) as runtime:
            log.info(
                "instance %s ready on %s:%s", settings.instance_id, settings.host, settings.port
            )
            app.state.drain = partial(runtime.gateway.drain, DRAIN_SECONDS)
            try:
                yield {"runtime": runtime}
            finally:
                app.state.drain = no_drain

    app = Starlette(
        routes=_routes(settings, metrics, process_faults),
        middleware=_middleware(settings, metrics),
        lifespan=lifespan,
        exception_handlers=handlers(lambda limit: metrics.limit_rejections.labels(limit).inc()),
    )
    app.state.drain = no_drain  # ``messaging serve`` awaits it before the lifespan ends
    return app
