"""Kafka clients: a producer (acks=all, not idempotent: see ADR 0006), a group consumer, a
readiness probe, and the app's topics created idempotently (:func:`ensure_topics`, used by
``messaging db init`` and the local stack: ADR 0029).

Explicit lifecycle in the manner of aiokafka itself: the context managers start the client and
always stop it, also when start fails half way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import attrs
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

TOPIC_ALREADY_EXISTS = 36
"""Kafka's error code when another client created the topic first."""


class TopicsError(Exception):
    """Kafka is unreachable (``unreachable``), or refused to create a topic: the message says
    which and why."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@attrs.frozen
class Replication:
    """How the app's topics are replicated on a cluster of ``brokers`` nodes (ADR 0029)."""

    brokers: int

    @property
    def replicas(self) -> int:
        """Three copies where the cluster has three nodes or more, else one per node."""
        return min(self.brokers, 3)

    @property
    def configs(self) -> dict[str, str]:
        """With three copies a write needs two in sync, so one node may fail without losing or
        refusing an acknowledged write (``acks=all``)."""
        return {"min.insync.replicas": "2"} if self.replicas >= 3 else {}


@attrs.frozen
class Topics:
    """What :func:`ensure_topics` found and did."""

    replication: Replication
    created: tuple[str, ...]
    existing: tuple[str, ...]
    short: tuple[tuple[str, int, int], ...]
    """Existing topics with fewer partitions than asked: (name, partitions, asked). Left as
    they are: adding partitions moves chats to other partitions, an operator's decision."""


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    brokers: int | None = None,
    timeout_seconds: float = 15.0,
) -> Topics:
    """Create each topic of ``topics`` (name -> partitions) that does not exist, replicated as
    :class:`Replication` says for the cluster's size. Idempotent: an existing topic is left as
    it is (one created meanwhile by another client too); one with fewer partitions than asked is
    reported in ``short``. Raises :class:`TopicsError` when Kafka does not answer within
    ``timeout_seconds`` or refuses a topic.

    ``brokers``: the cluster's known size (the local stack's profile). Topics are then created
    only once that many brokers have registered, replicated for that size: brokers register
    with the controller a little after they answer, and a topic created in that moment was
    given two replicas and no ``min.insync.replicas`` on the three-node profile, so a leader cut
    from the others acknowledged writes alone and lost them on rejoining (seen once in the
    scenario of ADR 0037). Without it, the size is what the cluster answers now."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_seconds * 1000)
    )
    registered: list[int] = []
    try:
        async with asyncio.timeout(timeout_seconds):
            await admin.start()
            replication = Replication(await _registered(admin, brokers, registered))
            partitions = await _partitions(admin, list(topics))
            missing = {name: n for name, n in topics.items() if name not in partitions}
            created = await _create(admin, bootstrap, missing, replication) if missing else []
            if len(created) < len(missing):  # created by another client meanwhile
                partitions |= await _partitions(admin, [n for n in missing if n not in created])
    except TimeoutError:
        if brokers is not None and registered and registered[-1] < brokers:
            raise TopicsError(
                f"only {registered[-1]} of the {brokers} brokers expected had registered with "
                f"Kafka at {bootstrap} after {timeout_seconds:g}s; no topic created"
            ) from None
        raise TopicsError(
            f"Kafka at {bootstrap} did not answer within {timeout_seconds:g}s", unreachable=True
        ) from None
    except (KafkaConnectionError, OSError) as exc:
        raise TopicsError(
            f"Kafka at {bootstrap} is unreachable: {exc!r}", unreachable=True
        ) from exc
    except KafkaError as exc:
        raise TopicsError(f"Kafka at {bootstrap} refused: {exc!r}") from exc
    finally:
        await admin.close()
    return Topics(
        replication=replication,
        created=tuple(created),
        existing=tuple(n for n in topics if n not in created),
        short=tuple(
            (name, partitions[name], asked)
            for name, asked in topics.items()
            if name in partitions and name not in created and partitions[name] < asked
        ),
    )


async def _registered(admin: AIOKafkaAdminClient, brokers: int | None, seen: list[int]) -> int:
    """The brokers registered now, or, given the cluster's size, once that many have (each
    count seen is appended to ``seen``, for the error if they never do)."""
    seen.append(len((await admin.describe_cluster())["brokers"]))
    while brokers is not None and seen[-1] < brokers:
        await asyncio.sleep(0.2)
        seen.append(len((await admin.describe_cluster())["brokers"]))
    return brokers or seen[-1]


async def _partitions(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """The partition count of each of ``names`` that exists."""
    described = await admin.describe_topics(names)
    return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}


async def _create(
    admin: AIOKafkaAdminClient, bootstrap: str, topics: Mapping[str, int], replication: Replication
) -> list[str]:
    """Create ``topics`` (name -> partitions): the names created now (not those another client
    created meanwhile); :class:`TopicsError` if Kafka refuses one."""
    answer = await admin.create_topics(
        [
            NewTopic(name, count, replication.replicas, topic_configs=replication.configs)
            for name, count in topics.items()
        ]
    )
    created: list[str] = []
    for name, code, message in answer.topic_errors:
        if code == 0:
            created.append(name)
        elif code != TOPIC_ALREADY_EXISTS:
            raise TopicsError(
                f"Kafka at {bootstrap} refused to create topic {name} "
                f"({topics[name]} partitions, {replication.replicas} replicas): "
                f"error {code}: {message}"
            )
    return created


@asynccontextmanager
async def open_producer(bootstrap: str, *, client_id: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        # Not idempotent: aiokafka's idempotent producer keeps a sequence gap after a batch fails
        # during a broker restart and then refuses every later batch for that partition
        # (OutOfOrderSequenceNumber) for the producer's life. Duplicates are harmless here
        # (ADR 0006: at-least-once, clients drop duplicates by sequence).
        enable_idempotence=False,
        linger_ms=2,
        request_timeout_ms=10_000,
    )
    try:
        await producer.start()
        yield producer
    finally:
        await producer.stop()


METADATA_MAX_AGE_MS = 5_000
"""The group consumer's periodic metadata refresh (aiokafka's default is 300,000)."""


@asynccontextmanager
async def open_consumer(
    bootstrap: str,
    topics: tuple[str, ...],
    *,
    group_id: str,
    client_id: str,
    auto_offset_reset: str = "earliest",
    session_timeout_ms: int = 10_000,
) -> AsyncIterator[AIOKafkaConsumer]:
    """A group consumer with auto-commit off: the caller commits after it has handed off, so
    a crash re-delivers rather than drops (at-least-once)."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        isolation_level="read_committed",
        max_poll_records=500,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(100, session_timeout_ms // 4),
        # aiokafka 0.14 retries an offset lookup (ListOffsets) that a former leader refuses
        # (NotLeaderForPartition) without refreshing metadata: after a broker partitioned from
        # the others heals, a partition's consumption stopped until the next periodic refresh
        # (5 min by default). Refreshing every 5 s bounds that stall (ADR 0037).
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
    )
    try:
        await consumer.start()
        yield consumer
    finally:
        await consumer.stop()


@asynccontextmanager
async def open_reader(bootstrap: str, *, client_id: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer without a group, for tools that assign partitions and read them: nothing
    is committed, so reading changes nothing."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, client_id=client_id, enable_auto_commit=False
    )
    try:
        await consumer.start()
        yield consumer
    finally:
        await consumer.stop()


class KafkaHealth:
    """Ready when the broker answers a metadata request within the timeout. Not critical
    (ADR 0033): without Kafka a process still takes sends and delivers directly, so ``/readyz``
    says degraded rather than unready."""

    name = "kafka"
    critical = False

    def __init__(self, producer: AIOKafkaProducer, timeout_seconds: float = 2.0) -> None:
        self._producer = producer
        self._timeout = timeout_seconds

    async def check(self) -> None:
        client = self._producer.client
        ok = await asyncio.wait_for(client.fetch_all_metadata(), self._timeout)
        if not ok or not ok.brokers():
            raise ConnectionError("Kafka answered no brokers")
