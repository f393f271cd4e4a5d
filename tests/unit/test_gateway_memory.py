"""What an idle connection costs the gateway, and the machinery that keeps it small.

An idle authenticated socket holds one reader task and a few small objects: the writer and the
command and sync lanes run only while they have work, idle timeouts are one sweep for the whole
process, and the transport forgets the handshake once it is done (docs/benchmarks.md, "Memory
per idle socket"). These tests pin each of those, the ordering the lanes keep, and the gateway's
own allocations per idle socket through a real uvicorn server.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import attrs
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import ClientConnection, connect

from messaging.bootstrap import gateway_config
from messaging.connection.config import GatewayConfig
from messaging.connection.gateway import Gateway
from messaging.connection.outbound import OutboundQueue
from messaging.connection.registry import LocalConnections
from messaging.connection.session import Connection, State
from messaging.connection.transport import HANDSHAKE_ATTRIBUTES, LeanWebSocketProtocol
from messaging.domain.model import Message
from messaging.metrics import Metrics
from messaging.protocol import frames
from messaging.protocol.chat import ConversationReader, DeliveryAckSink, MessageIngest
from messaging.protocol.delivery import Delivery, RouteRegistry
from messaging.protocol.frames import CloseCode
from messaging.protocol.identity import Principal, SessionChecker, TokenVerifier
from messaging.settings import Settings
from tests.polling import eventually

METRICS = Metrics()


class Sent:
    """A socket's ``send_text``: records frames; ``gate`` cleared makes sends wait."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.error: BaseException | None = None

    async def __call__(self, text: str) -> None:
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.frames.append(text)


def connection(send: Callable[[str], Awaitable[None]] | None = None) -> Connection:
    return Connection("u1", "d1", OutboundQueue(100, 65536), METRICS, send or Sent())


_BEFORE: set[asyncio.Task[Any]] = set()
"""Tasks already running when the test began: the event loop is shared by the whole session,
so earlier tests' long-lived tasks (Playwright's, for one) must not count as this test's."""


@pytest.fixture(autouse=True)
async def _tasks_before() -> AsyncIterator[None]:
    _BEFORE.clear()
    _BEFORE.update(asyncio.all_tasks())
    yield
    _BEFORE.clear()


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - _BEFORE - {asyncio.current_task()}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def idle() -> bool:
    return not other_tasks()


def lanes(conn: Connection) -> tuple[object, object]:
    return conn.commands, conn.syncs


# ------------------------------------------------------------------ writer and lanes


async def test_the_writer_runs_only_while_frames_are_queued() -> None:
    sent = Sent()
    conn = connection(sent)
    for i in range(3):
        assert conn.push_frame(frames.pong(str(i), 0))
    assert len(other_tasks()) == 1
    await settle()
    assert [orjson.loads(f)["id"] for f in sent.frames] == ["0", "1", "2"]
    assert not other_tasks()
    assert len(conn.queue) == 0
    conn.push_frame(frames.pong("3", 0))  # a new burst starts a new writer
    await settle()
    assert orjson.loads(sent.frames[-1])["id"] == "3"
    assert not other_tasks()


async def test_a_paced_replay_behind_a_stalled_socket_waits_then_follows_in_order() -> None:
    sent = Sent()
    sent.gate.clear()
    conn = Connection("u1", "d1", OutboundQueue(10, 65536), METRICS, sent)

    async def replay() -> None:
        for i in range(30):
            await conn.put_paced(f"r{i}".encode())

    replaying = asyncio.create_task(replay())
    await settle()
    assert not replaying.done()
    assert len(conn.queue) <= 10 // 2 + 1  # waits below half, leaving room for live pushes
    assert conn.push(b"live", "message")
    sent.gate.set()
    await asyncio.wait_for(replaying, 5)
    await settle()
    replayed = [f for f in sent.frames if f.startswith("r")]
    assert replayed == [f"r{i}" for i in range(30)]
    assert "live" in sent.frames
    assert not other_tasks()


async def test_a_lane_handles_items_in_order_one_at_a_time_and_ends_when_idle() -> None:
    conn = connection()
    handled: list[int] = []
    running = 0

    async def handle(_: Connection, item: int) -> None:
        nonlocal running
        running += 1
        assert running == 1
        await asyncio.sleep(0.001 * (item % 3))
        handled.append(item)
        running -= 1

    lane = conn.commands = conn.lane(64, handle)
    for i in range(10):
        assert lane.put(i)
        if i % 4 == 0:
            await asyncio.sleep(0.002)
    await eventually(idle)
    assert handled == list(range(10))
    await settle()
    assert lanes(conn) == (None, None)  # an idle lane is dropped with its task
    lane = conn.commands = conn.lane(64, handle)
    assert lane.put(10)
    await eventually(idle)
    assert handled[-1] == 10


async def test_a_lane_bounds_the_waiting_items_not_the_one_in_hand() -> None:
    """As ``asyncio.Queue(limit).put_nowait`` did: the item being handled does not count."""
    conn = connection()
    release = asyncio.Event()

    async def handle(_: Connection, item: int) -> None:
        await release.wait()

    lane = conn.lane(2, handle)
    assert lane.put(1)
    await settle()  # the lane took item 1
    assert lane.put(2)
    assert lane.put(3)
    assert not lane.put(4)
    assert len(lane) == 2
    release.set()
    await eventually(idle)


async def test_shutdown_cancels_and_awaits_every_task_and_starts_no_more() -> None:
    sent = Sent()
    sent.gate.clear()
    conn = connection(sent)
    blocked = asyncio.Event()

    async def handle(_: Connection, item: int) -> None:
        await blocked.wait()

    commands = conn.commands = conn.lane(64, handle)
    syncs = conn.syncs = conn.lane(32, handle)
    commands.put(1)
    syncs.put(1)
    conn.push_frame(frames.pong(None, 0))
    conn.start_reader(asyncio.sleep(3600))
    await settle()
    assert len(other_tasks()) == 4
    await conn.shutdown()
    assert not other_tasks()
    assert conn.stopped().done()
    assert conn.close_code is None
    assert not conn.push_frame(frames.pong(None, 0))
    commands.put(2)
    await settle()
    assert not other_tasks()


async def test_a_failing_task_closes_with_1011_and_a_gone_peer_stops_without_a_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn = connection()

    async def broken(_: Connection, item: int) -> None:
        raise RuntimeError("bug")

    conn.commands = conn.lane(64, broken)
    conn.commands.put(1)
    await asyncio.wait_for(conn.stopped(), 5)
    assert conn.close_code is CloseCode.INTERNAL_ERROR
    assert "connection task failed" in caplog.text
    await conn.shutdown()

    sent = Sent()
    sent.error = OSError("gone")
    gone = connection(sent)
    gone.push_frame(frames.pong(None, 0))
    await asyncio.wait_for(gone.stopped(), 5)
    assert gone.state is State.CLOSING
    assert gone.close_code is None
    await gone.shutdown()


async def test_the_first_close_code_wins_and_wakes_the_handler() -> None:
    conn = connection()
    waiting = conn.stopped()
    assert not waiting.done()
    conn.close(CloseCode.SLOW_CONSUMER, "slow")
    conn.close(CloseCode.IDLE_TIMEOUT, "idle")
    assert waiting.done()
    assert (conn.close_code, conn.close_reason) == (CloseCode.SLOW_CONSUMER, "slow")
    await conn.shutdown()


# ------------------------------------------------------------------ the idle sweep


def test_the_idle_sweep_closes_only_connections_silent_for_the_timeout() -> None:
    now = [1000.0]
    local = LocalConnections(Metrics())
    gateway = Gateway(
        tokens=cast(TokenVerifier, None),
        sessions=cast(SessionChecker, None),
        ingest=cast(MessageIngest, None),
        reader=cast(ConversationReader, None),
        acks=cast(DeliveryAckSink, None),
        routes=cast(RouteRegistry, None),
        local=local,
        config=attrs.evolve(gateway_config(Settings()), idle_timeout_seconds=60.0),
        metrics=Metrics(),
        monotonic=lambda: now[0],
    )
    quiet = connection()
    quiet.last_seen = 939.0
    recent = connection()
    recent.last_seen = 941.0
    closing = connection()
    closing.last_seen = 0.0
    closing.close(CloseCode.SLOW_CONSUMER, "slow")
    for c in (quiet, recent, closing):
        local.add(c)
    assert gateway.close_idle() == 1
    assert quiet.close_code is CloseCode.IDLE_TIMEOUT
    assert quiet.close_reason == "nothing received for 60s"
    assert recent.state is State.LIVE
    assert closing.close_code is CloseCode.SLOW_CONSUMER


# ------------------------------------------------------------------ through uvicorn


class Tokens:
    def verify(self, token: str) -> Principal:
        return Principal(user_id=f"u_{token}", device_id="d", token_id=token, expires_at=0)

    def verify_for_device(self, token: str, device_id: str) -> Principal:
        return Principal(user_id=f"u_{token}", device_id=device_id, token_id=token, expires_at=0)


class Nothing:
    """Sessions, routes and the conversation reader of users who have no chat."""

    async def check_session(self, principal: Principal) -> None:
        return None

    async def announce(self, user_id: str) -> None:
        return None

    async def withdraw(self, user_id: str) -> None:
        return None

    async def list_chats(self, user_id: str) -> list[Any]:
        return []

    async def ack(self, user_id: str, chat_id: str, sequence: int) -> int:
        return 0

    async def ack_delivered(self, user_id: str, chat_id: str, sequence: int) -> int:
        return 0

    async def messages_after(self, *args: Any) -> Any:
        raise AssertionError("no chat to replay")

    async def send(self, **kwargs: Any) -> Message:
        raise AssertionError("no send")


def gateway_app(
    fakes: Nothing, local: LocalConnections, config: GatewayConfig | None = None
) -> Starlette:
    """A Starlette app with only the gateway, every port of which ``fakes`` plays."""
    gateway = Gateway(
        tokens=Tokens(),
        sessions=fakes,
        ingest=cast(MessageIngest, fakes),
        reader=cast(ConversationReader, fakes),
        acks=cast(DeliveryAckSink, fakes),
        routes=fakes,
        local=local,
        config=config or gateway_config(Settings()),
        metrics=Metrics(),
    )
    return Starlette(routes=[WebSocketRoute("/ws", gateway.handle)])


@contextlib.asynccontextmanager
async def serving(
    app: Any,
    protocol: type[asyncio.Protocol] = LeanWebSocketProtocol,
    *,
    send_buffer: int | None = None,
) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """``send_buffer``: SO_SNDBUF of the accepted sockets (Linux: they inherit it)."""
    sock = socket.socket()
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        ws=protocol,
        ws_per_message_deflate=False,
        lifespan="off",
        log_config=None,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started)
        yield f"ws://127.0.0.1:{port}/ws", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def protocols(server: uvicorn.Server) -> list[WebSocketsSansIOProtocol]:
    return [p for p in server.server_state.connections if isinstance(p, WebSocketsSansIOProtocol)]


async def echo(ws: WebSocket) -> None:
    await ws.accept()
    text = await ws.receive_text()
    await ws.send_text(text)
    await ws.receive_text()
    await ws.close(code=4010, reason="bye")


@pytest.mark.parametrize("protocol", [WebSocketsSansIOProtocol, LeanWebSocketProtocol])
async def test_the_lean_transport_forgets_the_handshake_and_still_serves(
    protocol: type[WebSocketsSansIOProtocol],
) -> None:
    """uvicorn keeps the upgrade request and 101 response for the socket's life (pinned: the
    lean transport is only useful while it does); the lean one drops both after the handshake,
    and frames and close codes still flow."""
    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    async with serving(app, protocol) as (url, server), connect(url, compression=None) as client:
        await client.send("hello")
        assert await client.recv() == "hello"
        [held] = protocols(server)
        kept = {name for name in HANDSHAKE_ATTRIBUTES if name in held.__dict__}
        if protocol is LeanWebSocketProtocol:
            assert kept == set()
        else:
            assert kept == set(HANDSHAKE_ATTRIBUTES)
        await client.send("done")
        await client.wait_closed()
        assert client.close_code == 4010
        assert client.close_reason == "bye"


async def test_an_idle_socket_costs_the_gateway_a_few_kilobytes() -> None:
    """Allocations made with the gateway's code (``messaging/connection/``) on the stack, per
    idle authenticated socket, after ``ready``, a ping and an empty sync: 25.8 KB with six tasks,
    two queues and three events per socket (the gateway before the redesign, measured the same
    way), 5.4 KB now. The bound leaves room for noise, not for a task or a queue per socket.

    40 sockets: tracing costs grow faster than the count (100 took 17.6 s, 40 took 6 s), and
    the allocations made once (about 6 KB, measured) add about 150 bytes per socket at 40
    against 60 at 100 (measured 5,057 and 4,964 bytes), well inside the bound's margin."""
    local = LocalConnections(Metrics())
    app = gateway_app(Nothing(), local)
    count = 40

    async def open_one(url: str, i: int) -> ClientConnection:
        client = await connect(url, compression=None)
        await client.send(
            orjson.dumps({"type": "auth", "token": f"t{i}", "device_id": "d"}).decode()
        )
        assert orjson.loads(await client.recv())["type"] == "ready"
        await client.send(orjson.dumps({"type": "ping", "id": "1"}).decode())
        assert orjson.loads(await client.recv())["type"] == "pong"
        await client.send(orjson.dumps({"type": "sync_request", "chats": []}).decode())
        return client

    async with serving(app) as (url, _):
        tracemalloc.start(30)
        try:
            await open_one(url, -1)  # warm up: first-use allocations are not per socket
            await settle()
            before = tracemalloc.take_snapshot()
            clients = [await open_one(url, i) for i in range(count)]
            await eventually(lambda: len(local) == count + 1)
            await asyncio.sleep(0.05)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        ours = [tracemalloc.Filter(True, "*/messaging/connection/*", all_frames=True)]
        stats = after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename")
        grown = sum(stat.size_diff for stat in stats)
        for client in clients:
            await client.close()
    per_socket = grown / count
    assert per_socket < 8192, f"{per_socket:.0f} bytes per idle socket"


class RacingRoutes(Nothing):
    """Routes whose ``announce`` lets fanout find the new socket at once: a message for the
    user is delivered to this process's connections while the announce is still running."""

    def __init__(self, local: LocalConnections) -> None:
        self.local = local

    async def announce(self, user_id: str) -> None:
        message = Message(
            chat_id="d_" + "1" * 32,
            sequence=1,
            sender_id="u_other",
            sender_device="d",
            client_message_id="m1",
            text="early",
            created_at_ms=0,
        )
        self.local.deliver([Delivery(message, (user_id,))])
        await asyncio.sleep(0)


async def test_ready_is_the_first_frame_even_when_fanout_races_the_registration() -> None:
    local = LocalConnections(Metrics())
    app = gateway_app(RacingRoutes(local), local)
    async with serving(app) as (url, _), connect(url, compression=None) as client:
        await client.send(orjson.dumps({"type": "auth", "token": "t", "device_id": "d"}).decode())
        first, second = orjson.loads(await client.recv()), orjson.loads(await client.recv())
        assert (first["type"], second["type"], second["text"]) == ("ready", "message", "early")
