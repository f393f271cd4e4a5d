"""One settings object, read from ``MESSAGING_*`` environment variables once, at start.

Every field has a default that works for ``make run`` on 127.0.0.1. A bad value stops the
start with a :class:`SettingsError` whose message names the variable, what it expected and
what it got. Nothing here does I/O beyond reading the mapping it is given.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, cast

import attrs

Environment = Literal["dev", "test", "production"]
DynamoEmulator = Literal["dynoxide", "moto"]
DynamoClientKind = Literal["lean", "aioboto3"]
OtpSenderName = Literal["dev", "log-only"]

PREFIX = "MESSAGING_"
TEST_PREFIX = "MESSAGING_TEST_"
"""Reserved for the test suite's own variables (emulator endpoints and the like): not settings."""
DEV_JWT_SECRET = "dev-only-insecure-secret-change-me-0123456789"
MIN_PRODUCTION_SECRET_BYTES = 32


class SettingsError(ValueError):
    """A setting has a bad value; the message names the environment variable."""


@attrs.frozen(kw_only=True)
class Settings:
    env: Environment = "dev"
    instance_id: str = ""

    # HTTP server
    host: str = "127.0.0.1"
    port: int = 8000

    # DynamoDB API (endpoint "" means real AWS, resolved by botocore)
    dynamodb_endpoint: str = "http://127.0.0.1:8001"
    aws_region: str = "us-east-1"
    table_prefix: str = "messaging-"
    dynamodb_deadline_seconds: float = 5.0
    store_latency_unready_ms: float = 500.0
    """``/readyz`` fails (check ``store_latency``) while the p99 of this process's recent
    DynamoDB calls is above this (ADR 0034)."""
    dynamodb_client: DynamoClientKind = "lean"
    """How DynamoDB calls are made (ADR 0023): ``lean`` (signed JSON over aiohttp) or
    ``aioboto3`` (the SDK, the reference transport)."""

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_messages_topic: str = "messages"
    kafka_messages_partitions: int = 8
    kafka_consumer_group: str = "messaging-fanout"
    kafka_session_timeout_ms: int = 3000
    """How soon a dead process's partitions move to the others (the broker's
    group.min.session.timeout.ms must allow it; the local stack sets 1000)."""

    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"

    # Identity
    jwt_secret: str = DEV_JWT_SECRET
    jwt_ttl_seconds: int = 3600
    otp_sender: OtpSenderName = "dev"
    otp_ttl_seconds: int = 300
    otp_max_attempts: int = 5
    otp_requests_per_phone_per_window: int = 5
    otp_requests_per_address_per_window: int = 30
    otp_rate_window_seconds: int = 600

    # Durability
    max_text_bytes: int = 4096
    max_group_members: int = 256
    idempotency_ttl_seconds: int = 7 * 24 * 3600

    # Connection plane
    outbound_queue_messages: int = 1000
    outbound_queue_bytes: int = 1_048_576
    ws_max_frame_bytes: int = 16_384
    ws_auth_timeout_seconds: float = 5.0
    ws_ping_interval_seconds: float = 15.0
    ws_ping_timeout_seconds: float = 10.0
    """A socket whose transport pong is this late is closed: a half-open socket is found within
    the ping interval plus this (25 s; ADR 0034)."""
    ws_idle_timeout_seconds: float = 60.0
    sync_page_size: int = 200
    sync_page_bytes: int = 256 * 1024
    """A sync replay page holds at most ``sync_page_size`` messages and about this many bytes of
    frames; the next page is read while one is written (docs/adr/0035-in-order-live-delivery.md)."""

    # Abuse limits, per process (docs/adr/0010-abuse-limits-and-origin-checks.md)
    limit_sends_per_second: float = 10.0
    limit_sends_burst: int = 30
    limit_syncs_per_minute: int = 30
    limit_connections_per_user: int = 10
    limit_connections_per_address: int = 200
    limit_chats_per_user: int = 500
    limit_rest_per_second_per_address: float = 50.0
    limit_rest_burst_per_address: int = 200
    allowed_origins: tuple[str, ...] = ()
    """Browser origins allowed besides the server's own: WebSocket ``Origin`` and CORS."""
    forwarded_allow_ips: str = "127.0.0.1"
    """Proxies whose ``X-Forwarded-For`` names the client address (uvicorn's setting)."""

    # Fanout and publish repair
    outbox_repair_after_seconds: float = 2.0
    outbox_sweep_interval_seconds: float = 1.0
    routing_ttl_seconds: int = 30
    fanout_max_attempts: int = 20
    """Tries of a batch that fails with a retriable error before it is parked as dead letters
    (docs/adr/0022-fanout-ports-and-error-seams.md)."""
    fanout_max_backoff_seconds: float = 2.0
    fanout_stall_ms: float = 30_000.0
    """A partition of this process's fanout consumer with records pending and none finished for
    longer than this is reported stalled: ``/readyz`` degraded, check ``fanout_progress``
    (docs/adr/0026-stalled-fanout-partitions.md)."""
    fanout_reorder_window_seconds: float = 0.05
    """How long the fanout holds a message whose chat's previous sequence has not come from
    the log yet, at most (0: no window; docs/adr/0035-in-order-live-delivery.md)."""

    # Local stack (``messaging stack``)
    stack_dir: Path = Path(".stack")
    dynamodb_emulator: DynamoEmulator = "dynoxide"
    stack_kafka_port: int = 9092
    stack_kafka_controller_port: int = 9093
    stack_kafka_brokers: int = 1
    """1, or 3 for the replicated profile (ADR 0029); node n uses the Kafka ports + 2(n-1)."""
    stack_dynamodb_port: int = 8001
    stack_redis_port: int = 6379
    stack_kafka_proxy_listeners: tuple[tuple[int, int], ...] = ()
    """Extra Kafka listeners for per-process fault proxies (ADR 0028), as ``LISTEN:ADVERTISED``
    pairs (``29100:29101,29102:29103``): the broker listens on LISTEN and tells clients that
    came in there to connect to 127.0.0.1:ADVERTISED, where a Toxiproxy path forwards to LISTEN.
    Single-node profile only; empty (the default) adds none."""
    stack_kafka_peer_proxy_port: int = 0
    """Replicated profile only (ADR 0037): the first of 27 ports through which every node
    reaches every other one (replication and controller traffic) over Toxiproxy paths of its
    own, one per ordered pair of nodes, so a test can cut one node from the others while
    clients still reach it. 0 (the default): the nodes talk directly."""
    stack_toxiproxy_port: int = 8474
    """Toxiproxy's HTTP API: the network fault proxy of the test profile (ADR 0028)."""
    stack_apps: int = 0
    """App processes behind HAProxy on ``port`` (``stack up --apps N``, ADR 0031); 0: none."""
    stack_app_port: int = 8100
    """App process n of the stack's app tier listens on this port + n."""

    # Test-only fault injection; refused in production.
    fault_hooks: bool = False

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def kafka_dead_letter_topic(self) -> str:
        """Where the fanout parks records it can never deliver (ADR 0030): one partition, so
        that an offset names one dead letter."""
        return f"{self.kafka_messages_topic}.dlq"

    @property
    def kafka_topics(self) -> dict[str, int]:
        """The app's topics and their partition counts, created by the stack and fixtures."""
        return {
            self.kafka_messages_topic: self.kafka_messages_partitions,
            self.kafka_dead_letter_topic: 1,
        }


def _parse_int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}, got {value}")
        return value

    return parse


def _parse_float(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low} to {high}, got {value}")
        return value

    return parse


def _parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return raw

    return parse


def _parse_choice_int(*choices: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {raw!r}")
        return value

    return parse


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _parse_str(raw: str) -> str:
    return raw


def _parse_nonempty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _parse_origins(raw: str) -> tuple[str, ...]:
    origins: list[str] = []
    for item in raw.split(","):
        origin = item.strip().rstrip("/")
        if not origin:
            continue
        scheme, sep, rest = origin.partition("://")
        if origin == "*" or not sep or scheme not in ("http", "https") or not rest or "/" in rest:
            raise ValueError(
                f"expected comma-separated origins like https://chat.example.com, got {item!r}"
            )
        origins.append(origin.lower())
    return tuple(origins)


def _parse_port_pairs(raw: str) -> tuple[tuple[int, int], ...]:
    pairs = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        listen, sep, advertised = item.partition(":")
        if not sep:
            raise ValueError(f"expected LISTEN:ADVERTISED port pairs, got {item!r}")
        pairs.append((_PORT(listen), _PORT(advertised)))
    return tuple(pairs)


def _parse_endpoint(raw: str) -> str:
    raw = raw.strip()
    if raw and not raw.startswith(("http://", "https://")):
        raise ValueError(f"expected an http(s) URL or empty for AWS, got {raw!r}")
    return raw


_PORT = _parse_int(1, 65535)
_POSITIVE = _parse_int(1, 2**31 - 1)

_PARSERS: dict[str, Callable[[str], Any]] = {
    "env": _parse_choice("dev", "test", "production"),
    "instance_id": _parse_str,
    "host": _parse_nonempty,
    "port": _PORT,
    "dynamodb_endpoint": _parse_endpoint,
    "aws_region": _parse_nonempty,
    "table_prefix": _parse_str,
    "dynamodb_deadline_seconds": _parse_float(0.1, 300.0),
    "store_latency_unready_ms": _parse_float(1.0, 600_000.0),
    "dynamodb_client": _parse_choice("lean", "aioboto3"),
    "kafka_bootstrap": _parse_nonempty,
    "kafka_messages_topic": _parse_nonempty,
    "kafka_messages_partitions": _parse_int(1, 1024),
    "kafka_consumer_group": _parse_nonempty,
    "kafka_session_timeout_ms": _parse_int(1000, 300_000),
    "redis_url": _parse_nonempty,
    "jwt_secret": _parse_nonempty,
    "jwt_ttl_seconds": _parse_int(60, 30 * 24 * 3600),
    "otp_sender": _parse_choice("dev", "log-only"),
    "otp_ttl_seconds": _parse_int(30, 3600),
    "otp_max_attempts": _parse_int(1, 20),
    "otp_requests_per_phone_per_window": _POSITIVE,
    "otp_requests_per_address_per_window": _POSITIVE,
    "otp_rate_window_seconds": _parse_int(1, 24 * 3600),
    "max_text_bytes": _parse_int(1, 65536),
    "max_group_members": _parse_int(2, 10_000),
    "idempotency_ttl_seconds": _parse_int(24 * 3600, 365 * 24 * 3600),
    "outbound_queue_messages": _parse_int(1, 1_000_000),
    "outbound_queue_bytes": _parse_int(1024, 1 << 30),
    "ws_max_frame_bytes": _parse_int(256, 1 << 20),
    "ws_auth_timeout_seconds": _parse_float(0.1, 60.0),
    "ws_ping_interval_seconds": _parse_float(0.1, 3600.0),
    "ws_ping_timeout_seconds": _parse_float(0.1, 3600.0),
    "ws_idle_timeout_seconds": _parse_float(0.5, 7200.0),
    "sync_page_size": _parse_int(1, 1000),  # durability.config.SYNC_MAX_LIMIT
    "sync_page_bytes": _parse_int(1024, 16 * 1024 * 1024),
    "limit_sends_per_second": _parse_float(0.01, 1_000_000.0),
    "limit_sends_burst": _POSITIVE,
    "limit_syncs_per_minute": _POSITIVE,
    "limit_connections_per_user": _POSITIVE,
    "limit_connections_per_address": _POSITIVE,
    "limit_chats_per_user": _POSITIVE,
    "limit_rest_per_second_per_address": _parse_float(0.01, 1_000_000.0),
    "limit_rest_burst_per_address": _POSITIVE,
    "allowed_origins": _parse_origins,
    "forwarded_allow_ips": _parse_str,
    "outbox_repair_after_seconds": _parse_float(0.1, 60.0),
    "outbox_sweep_interval_seconds": _parse_float(0.05, 60.0),
    "routing_ttl_seconds": _parse_int(2, 3600),
    "fanout_max_attempts": _parse_int(1, 1000),
    "fanout_max_backoff_seconds": _parse_float(0.01, 300.0),
    "fanout_stall_ms": _parse_float(100.0, 3_600_000.0),
    "fanout_reorder_window_seconds": _parse_float(0.0, 5.0),
    "stack_dir": Path,
    "dynamodb_emulator": _parse_choice("dynoxide", "moto"),
    "stack_kafka_port": _PORT,
    "stack_kafka_controller_port": _PORT,
    "stack_kafka_brokers": _parse_choice_int(1, 3),
    "stack_dynamodb_port": _PORT,
    "stack_redis_port": _PORT,
    "stack_kafka_proxy_listeners": _parse_port_pairs,
    "stack_kafka_peer_proxy_port": _parse_int(0, 65535 - 27),
    "stack_toxiproxy_port": _PORT,
    "stack_apps": _parse_int(0, 32),
    "stack_app_port": _parse_int(1, 65535 - 32),
    "fault_hooks": _parse_bool,
}


def env_var(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return PREFIX + field_name.upper()


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Build and validate settings from ``MESSAGING_*`` variables (``os.environ`` by default)."""
    environ = os.environ if environ is None else environ
    known = {env_var(name) for name in _PARSERS}
    unknown = sorted(
        k
        for k in environ
        if k.startswith(PREFIX) and not k.startswith(TEST_PREFIX) and k not in known
    )
    if unknown:
        raise SettingsError(f"{unknown[0]}: unknown setting (known: see messaging/settings.py)")
    values: dict[str, Any] = {}
    for name, parse in _PARSERS.items():
        raw = environ.get(env_var(name))
        if raw is None:
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{env_var(name)}: {exc}") from None
    # The service endpoints follow the local stack's ports unless given explicitly.
    values.setdefault(
        "kafka_bootstrap",
        ",".join(
            f"127.0.0.1:{values.get('stack_kafka_port', 9092) + 2 * n}"
            for n in range(values.get("stack_kafka_brokers", 1))
        ),
    )
    values.setdefault(
        "dynamodb_endpoint", f"http://127.0.0.1:{values.get('stack_dynamodb_port', 8001)}"
    )
    values.setdefault("redis_url", f"redis://127.0.0.1:{values.get('stack_redis_port', 6379)}/0")
    settings = Settings(**values)
    if not settings.instance_id:
        settings = attrs.evolve(
            settings, instance_id=f"{socket.gethostname()}-{settings.port}-{os.getpid()}"
        )
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Cross-field rules, including what production refuses."""
    if settings.is_production:
        if settings.jwt_secret == DEV_JWT_SECRET:
            raise SettingsError(
                f"{env_var('jwt_secret')}: production refuses the built-in development key"
            )
        if len(settings.jwt_secret.encode()) < MIN_PRODUCTION_SECRET_BYTES:
            raise SettingsError(
                f"{env_var('jwt_secret')}: production needs at least "
                f"{MIN_PRODUCTION_SECRET_BYTES} bytes"
            )
        if settings.otp_sender == "dev":
            raise SettingsError(
                f"{env_var('otp_sender')}: the dev sender exposes OTP codes over HTTP and is "
                "refused when MESSAGING_ENV=production"
            )
        if settings.fault_hooks:
            raise SettingsError(
                f"{env_var('fault_hooks')}: fault injection is refused "
                "when MESSAGING_ENV=production"
            )
    if settings.stack_kafka_port == settings.stack_kafka_controller_port:
        raise SettingsError(
            f"{env_var('stack_kafka_controller_port')}: must differ from "
            f"{env_var('stack_kafka_port')}"
        )


def lifted_limits_env() -> dict[str, str]:
    """Abuse limits raised out of the way, for test and load runs whose many users all come
    from 127.0.0.1 and send as fast as they can (the limits' own tests use low values)."""
    high = "1000000"
    return {
        env_var("otp_requests_per_address_per_window"): high,
        env_var("limit_sends_per_second"): high,
        env_var("limit_sends_burst"): high,
        env_var("limit_syncs_per_minute"): high,
        env_var("limit_connections_per_user"): high,
        env_var("limit_connections_per_address"): high,
        env_var("limit_chats_per_user"): high,
        env_var("limit_rest_per_second_per_address"): high,
        env_var("limit_rest_burst_per_address"): high,
    }


def describe(settings: Settings) -> dict[str, str]:
    """Settings as strings for logs, with secrets masked."""
    out: dict[str, str] = {}
    for field in attrs.fields(Settings):
        value = getattr(settings, field.name)
        out[field.name] = "***" if "secret" in field.name else str(cast(object, value))
    return out
