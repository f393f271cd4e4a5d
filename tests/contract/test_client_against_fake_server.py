"""ChatClient against the protocol-v1 fake server: ordering, gaps, resends, auth, backpressure,
and clean shutdown (docs/protocol.md, "Client rules")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import attrs
import pytest

from messaging.client import (
    AuthRejected,
    ChatClient,
    ClientClosed,
    ClientOptions,
    SendExpired,
    SendRejected,
)
from messaging.domain.model import Message
from tests.fakes.fake_ws_server import FakeServer
from tests.polling import eventually

A, B = "u_alice", "u_bob"
FAST = ClientOptions(
    backoff_initial=0.01,
    backoff_max=0.05,
    ack_interval=0.01,
    gap_delay=0.05,
    discovery_idle=0.2,
    close_timeout=1.0,
    start_timeout=5.0,
)


def token(user: str, device: str) -> str:
    return f"good:{user}:{device}"


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with FakeServer() as fake:
        yield fake


def client_for(
    server: FakeServer, user: str, device: str = "d1", options: ClientOptions = FAST
) -> ChatClient:
    return ChatClient(server.url, token(user, device), device, options=options)


async def take(client: ChatClient, count: int, seconds: float = 5.0) -> list[Message]:
    async with asyncio.timeout(seconds):
        return [await client.next_message() for _ in range(count)]


async def settle(client: ChatClient) -> None:
    """Let the first position-less sync finish (the chats become known)."""
    await asyncio.sleep(FAST.discovery_idle + 0.05)


def client_tasks() -> set[asyncio.Task[object]]:
    """Tasks run by ChatClient or by a websockets *client* connection (the fake server sends
    no keepalive pings, so any keepalive task left is a client's)."""
    leftover = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        where = code.co_filename if code is not None else ""
        if "messaging/client" in where or (code is not None and code.co_name == "keepalive"):
            leftover.add(task)
    return leftover


async def test_reordered_and_duplicated_pushes_are_delivered_once_in_order(
    server: FakeServer,
) -> None:
    chat = server.create_chat([A, B])
    async with client_for(server, A) as alice:
        await settle(alice)
        server.hold_pushes = True
        for i in range(1, 21):
            server.post(chat, B, f"m{i}")
        assert server.release_held("reverse", duplicate=True) == 40
        received = await take(alice, 20)
        assert [m.sequence for m in received] == list(range(1, 21))
        assert [m.text for m in received] == [f"m{i}" for i in range(1, 21)]
        assert alice.stats.duplicates >= 20
        assert alice.history.received_sequences(chat) == list(range(1, 21))
        # acked (batched: the highest delivered), and recorded
        await eventually(lambda: server.acks.get((A, chat)) == 20)
        assert alice.history.acks[-1].sequence == 20
        assert all(record.delivered_at_ms for record in alice.history.received)
        acked = [frame for user, frame in server.frames if frame["type"] == "ack"]
        assert len(acked) < 20  # batched, not one per message


async def test_a_gap_is_filled_by_a_sync_from_the_last_delivered(server: FakeServer) -> None:
    chat = server.create_chat([A, B])
    async with client_for(server, A) as alice:
        await settle(alice)
        server.skip_pushes = 1
        for i in range(1, 4):
            server.post(chat, B, f"m{i}")  # m1 is never pushed
        received = await take(alice, 3)
        assert [m.sequence for m in received] == [1, 2, 3]
        assert alice.stats.gap_syncs == 1
        syncs = [f for _, f in server.frames if f["type"] == "sync_request" and f.get("chats")]
        assert syncs[-1]["chats"] == [{"chat_id": chat, "last_acked_sequence": 0}]
        assert alice.history.received_sequences(chat) == [1, 2, 3]


async def test_a_push_late_by_less_than_the_gap_grace_causes_no_sync(server: FakeServer) -> None:
    """ADR 0035: a live push that arrives out of order but within ``gap_delay`` fills the gap by
    itself: no sync request, so no replay of what then also arrives live (no duplicates)."""
    chat = server.create_chat([A, B])
    grace = attrs.evolve(FAST, gap_delay=0.5)
    async with client_for(server, A, options=grace) as alice:
        await settle(alice)
        syncs_before = alice.stats.sync_requests
        server.hold_pushes = True
        server.post(chat, B, "m1")
        server.post(chat, B, "m2")
        (first_conn, first), (second_conn, second) = server.held
        server.held, server.hold_pushes = [], False
        second_conn.push(second)  # 2 before 1: a gap
        await eventually(lambda: alice.stats.gaps_detected == 1)
        await asyncio.sleep(0.1)  # well inside the grace
        first_conn.push(first)
        received = await take(alice, 2)
        assert [m.sequence for m in received] == [1, 2]
        await asyncio.sleep(grace.gap_delay)  # past the grace: still no sync
        assert alice.stats.gap_syncs == 0
        assert alice.stats.sync_requests == syncs_before
        assert alice.stats.duplicates == 0


async def test_a_lost_last_message_comes_with_resync(server: FakeServer) -> None:
    """A gap is invisible when the *last* push is lost: the server's resync recovers it."""
    chat = server.create_chat([A, B])
    async with client_for(server, A) as alice:
        await settle(alice)
        server.skip_pushes = 1
        server.post(chat, B, "lost push")
        await server.send_resync(A)
        [message] = await take(alice, 1)
        assert (message.sequence, message.text) == (1, "lost push")
        assert alice.stats.resyncs == 1


async def test_a_dropped_connection_resends_with_the_same_id_and_one_sequence(
    server: FakeServer,
) -> None:
    chat = server.create_chat([A, B])
    async with client_for(server, A) as alice, client_for(server, B) as bob:
        await settle(alice)
        server.drop_before_send_ack = 1
        result = await asyncio.wait_for(alice.send(chat, "hello", "alice-1"), 5)
        assert (result.sequence, result.client_message_id) == (1, "alice-1")
        assert result.duplicate is True  # the resend found the stored message
        assert result.attempts == 2
        sends = [f for _, f in server.frames if f["type"] == "send_message"]
        assert [f["client_message_id"] for f in sends] == ["alice-1", "alice-1"]
        assert server.sequences(chat) == [1]
        assert alice.stats.reconnects == 1
        assert alice.stats.close_codes[1006] == 1  # no close frame
        # every device, the sender's included, gets the message exactly once
        for client in (alice, bob):
            await client.wait_for(chat, 1)
            assert client.history.received_sequences(chat) == [1]
        record = alice.history.send("alice-1")
        assert record is not None
        assert (record.outcome, record.sequence, record.attempts) == ("acked", 1, 2)


async def test_retriable_errors_are_retried_and_others_rejected(server: FakeServer) -> None:
    chat = server.create_chat([A, B])
    async with client_for(server, A) as alice:
        server.fail_sends = ["store_unavailable", "rate_limited"]
        result = await asyncio.wait_for(alice.send(chat, "eventually"), 5)
        assert (result.sequence, result.attempts, result.duplicate) == (1, 3, False)
        assert alice.history.errors == {"store_unavailable": 1, "rate_limited": 1}

        server.fail_sends = ["idempotency_key_reused"]
        with pytest.raises(SendRejected) as caught:
            await alice.send(chat, "never")
        assert (caught.value.code, caught.value.retriable) == ("idempotency_key_reused", False)

        other = server.create_chat([B])
        with pytest.raises(SendRejected, match="not_a_member"):
            await alice.send(other, "not mine")
        assert [r.outcome for r in alice.history.sends] == ["acked", "rejected", "rejected"]


async def test_a_sync_refused_with_a_retriable_error_is_retried_and_pairs_stay_right(
    server: FakeServer,
) -> None:
    """Failure-scenarios bug 2: an error answering a sync must not shift later answers."""
    chat = server.create_chat([A, B])
    async with client_for(server, A) as alice:
        await alice.sync([chat])
        await asyncio.sleep(0.3)  # the connect-time discovery's answers are all in
        server.fail_syncs = ["store_unavailable", "rate_limited"]
        first = asyncio.ensure_future(alice.sync([chat]))
        head = await asyncio.wait_for(first, 5)  # retried twice, then answered
        assert head == {chat: 0}
        assert alice.history.errors == {"store_unavailable": 1, "rate_limited": 1}
        # The next sync is answered by its own sync_complete, not left waiting.
        assert await asyncio.wait_for(alice.sync([chat]), 5) == {chat: 0}
        requests = [f for _, f in server.frames if f["type"] == "sync_request"]
        assert len(requests) >= 5


async def test_a_send_expires_after_its_max_age(server: FakeServer) -> None:
    chat = server.create_chat([A])
    server.ignore_sends = True
    options = ClientOptions(
        backoff_initial=0.01, backoff_max=0.05, send_max_age=0.3, send_ack_timeout=0.1
    )
    async with client_for(server, A, options=options) as alice:
        with pytest.raises(SendExpired):
            await alice.send(chat, "into the void")
        record = alice.history.sends[0]
        assert record.outcome == "expired"
        assert record.attempts >= 2  # resent after send_ack_timeout


@pytest.mark.parametrize(("tok", "code"), [("bad", 4001), (token(A, "other-device"), 4003)])
async def test_auth_rejection_surfaces_without_a_reconnect_loop(
    server: FakeServer, tok: str, code: int
) -> None:
    client = ChatClient(server.url, tok, "d1", options=FAST)
    with pytest.raises(AuthRejected) as caught:
        await client.start()
    assert caught.value.close_code == code
    await asyncio.sleep(0.2)  # backoff would have retried many times by now
    assert server.connection_attempts == 1
    assert client.stats.connect_attempts == 1
    assert not client_tasks()
    with pytest.raises(AuthRejected):
        client.submit("g_1", "x")


async def test_a_4001_after_ready_stops_the_client(server: FakeServer) -> None:
    server.create_chat([A])
    async with client_for(server, A) as alice:
        waiting = asyncio.create_task(alice.next_message())
        pending = alice.submit("g_nowhere", "x")
        server.ignore_sends = True
        await asyncio.sleep(0.05)
        await server.close_connections(4001, A)
        with pytest.raises(AuthRejected):
            await asyncio.wait_for(waiting, 2)
        with pytest.raises(AuthRejected):
            await pending
        await asyncio.sleep(0.1)
        assert server.connection_attempts == 1
        assert alice.failure is not None


async def test_pause_reading_then_slow_consumer_close_loses_nothing() -> None:
    async with FakeServer(outbound_limit=16, send_buffer=16 * 1024) as server:
        chat = server.create_chat([A, B])
        async with client_for(server, A) as alice:
            await settle(alice)
            alice.pause_reading()
            text = "x" * 3000
            posted = 0
            while server.slow_consumer_closes == 0:
                server.post(chat, B, text)
                posted += 1
                assert posted < 5_000, "the server never saw a slow consumer"
                await asyncio.sleep(0.001)  # the server's writer keeps up: TCP buffers fill
            assert posted > 30  # more than the outbound queue: the socket buffers filled first
            alice.resume_reading()
            received = await take(alice, posted, seconds=10)
            assert [m.sequence for m in received] == list(range(1, posted + 1))
            assert alice.stats.slow_consumer_disconnects == 1
            assert alice.stats.close_codes[4009] == 1
            assert alice.stats.reconnects == 1
            assert alice.history.received_sequences(chat) == list(range(1, posted + 1))


async def test_a_chat_joined_while_disconnected_is_discovered_on_reconnect(
    server: FakeServer,
) -> None:
    known = server.create_chat([A, B])
    async with client_for(server, A) as alice:
        await settle(alice)
        assert set(alice.known_chats()) == {known}
        new = server.create_chat([A, B])
        server.skip_pushes = 1
        server.post(new, B, "while you were away")  # alice never sees it live
        alice.drop_connection()
        [message] = await take(alice, 1)
        assert (message.chat_id, message.sequence) == (new, 1)
        assert alice.stats.reconnects == 1


async def test_a_member_added_late_skips_what_it_may_not_see(server: FakeServer) -> None:
    chat = server.create_chat([B])
    async with client_for(server, A) as alice:
        await settle(alice)
        for i in range(1, 6):
            server.post(chat, B, f"before {i}")
        server.add_member(chat, A)
        server.post(chat, B, "welcome")  # sequence 6: a gap 1..5 for alice
        [message] = await take(alice, 1)
        assert (message.sequence, message.text) == (6, "welcome")
        assert alice.delivered_sequence(chat) == 6
        assert alice.stats.skipped == 5
        assert alice.history.received_sequences(chat) == [6]


async def test_explicit_sync_and_the_message_iterator(server: FakeServer) -> None:
    chat = server.create_chat([A, B])
    alice = client_for(server, A)
    await alice.start()
    try:
        assert await asyncio.wait_for(alice.sync(), 2) == {chat: 0}
        server.post(chat, B, "one")
        assert await asyncio.wait_for(alice.sync([chat]), 2) == {chat: 1}
        seen: list[int] = []

        async def consume() -> None:
            async for message in alice.messages():
                seen.append(message.sequence)

        consumer = asyncio.create_task(consume())
        server.post(chat, B, "two")
        await alice.wait_for(chat, 2)
        await asyncio.sleep(0.05)
    finally:
        await alice.close()
    await asyncio.wait_for(consumer, 2)  # the iterator ends when the client closes
    assert seen == [1, 2]
    with pytest.raises(ClientClosed):
        await alice.send(chat, "too late")


async def test_close_leaves_no_tasks_behind() -> None:
    before = asyncio.all_tasks()
    async with FakeServer() as server:
        chat = server.create_chat([A, B])
        alice = client_for(server, A)
        await alice.start()
        assert client_tasks()
        await alice.send(chat, "hi")
        await take(alice, 1)
        alice.drop_connection()
        await alice.wait_for(chat, 1)
        pending = alice.submit(chat, "x")
        await alice.close()
        with pytest.raises(ClientClosed):
            await pending
        assert not client_tasks()
        assert alice.history.sends[-1].outcome in ("acked", "abandoned")
    assert asyncio.all_tasks() - before == {asyncio.current_task()} - before


async def test_a_start_that_never_connects_cleans_up() -> None:
    async with FakeServer() as server:
        url = server.url
    options = ClientOptions(backoff_initial=0.01, backoff_max=0.05, start_timeout=0.3)
    client = ChatClient(url, token(A, "d1"), "d1", options=options)
    with pytest.raises(TimeoutError):
        await client.start()
    assert client.stats.connect_failures >= 2
    assert not client_tasks()
