"""The whole graph (identity, gateway, ingest, outbox relay, fanout) in one process on fakes,
driven through the app's own ASGI interface: no socket, no Kafka, Redis or DynamoDB (ADR 0022).

A frame sent on one in-memory WebSocket comes out as a ``message`` frame on another user's
socket, through the same composition root (``create_app``) the server runs, given a factory of
fake adapters instead of :func:`messaging.bootstrap.open_adapters`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import attrs
import orjson
from starlette.types import ASGIApp, Message

from messaging.bootstrap import Adapters, create_app
from messaging.metrics import Metrics
from messaging.protocol.delivery import LocalDelivery
from messaging.protocol.frames import SUBPROTOCOL, WS_PATH
from messaging.settings import Settings
from tests.fakes.durability import InMemoryMessageStore, InMemoryOutbox
from tests.fakes.fanout import (
    EventLogPublisher,
    FakeEventSource,
    FakeHandoff,
    FakeRoutes,
    HandoffBus,
    InMemoryEventLog,
    RecordingDeadLetters,
    RouteServer,
)
from tests.fakes.identity import (
    FakeClock,
    InMemoryDeviceSessions,
    InMemoryOtpStore,
    InMemoryRateLimiter,
    InMemoryUserDirectory,
    RecordingSender,
)

SECONDS = 10.0


@attrs.define
class Fakes:
    log: InMemoryEventLog = attrs.Factory(InMemoryEventLog)
    routes: RouteServer = attrs.Factory(RouteServer)
    bus: HandoffBus = attrs.Factory(HandoffBus)
    store: InMemoryMessageStore = attrs.Factory(InMemoryMessageStore)
    letters: RecordingDeadLetters = attrs.Factory(RecordingDeadLetters)
    clock: FakeClock = attrs.Factory(FakeClock)
    sender: RecordingSender = attrs.Factory(RecordingSender)
    users: InMemoryUserDirectory = attrs.Factory(InMemoryUserDirectory)
    devices: InMemoryDeviceSessions = attrs.Factory(InMemoryDeviceSessions)
    assigned: dict[str, tuple[int, ...]] = attrs.Factory(dict)
    """Instance id -> the log partitions its consumer owns (all when not given)."""

    @asynccontextmanager
    async def adapters(
        self, settings: Settings, metrics: Metrics, local: LocalDelivery
    ) -> AsyncIterator[Adapters]:
        handoff = FakeHandoff(self.bus, settings.instance_id)
        yield Adapters(
            store=self.store,
            outbox=InMemoryOutbox(self.store),
            publisher=EventLogPublisher(self.log),
            users=self.users,
            devices=self.devices,
            otps=InMemoryOtpStore(self.clock),
            limiter=InMemoryRateLimiter(self.clock),
            otp_sender=self.sender,
            dev_inbox=self.sender,
            events=FakeEventSource(self.log, assigned=self.assigned.get(settings.instance_id)),
            routes=FakeRoutes(self.routes, settings.instance_id, on_lost=local.suggest_resync),
            handoff=handoff,
            receiver=handoff,
            dead_letters=self.letters,
        )


# ------------------------------------------------------------------ a minimal ASGI driver


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """Run the app's lifespan; yields the state it set up (what a server copies per request)."""
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}, inbox.get, outbox.put)
    )
    try:
        async with asyncio.timeout(SECONDS):
            started = await outbox.get()
        assert started["type"] == "lifespan.startup.complete", started
        yield state
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        async with asyncio.timeout(SECONDS):
            await task


def _scope(kind: str, path: str, state: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http" if kind == "http" else "ws",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "state": dict(state),
        **extra,
    }


async def call(
    app: ASGIApp,
    state: Mapping[str, Any],
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    query: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    headers = [(b"host", b"testserver"), (b"content-type", b"application/json")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    payload = b"" if body is None else orjson.dumps(body)
    scope = _scope(
        "http",
        path,
        state,
        method=method,
        headers=headers,
        query_string=urlencode(query or {}).encode(),
    )
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    async with asyncio.timeout(SECONDS):
        await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    start = next(m for m in sent if m["type"] == "http.response.start")
    if (b"content-type", b"application/json") in start["headers"]:
        return status, orjson.loads(data)
    return status, data.decode()


class Socket:
    """An in-memory WebSocket to the app."""

    def __init__(self, app: ASGIApp, state: Mapping[str, Any]) -> None:
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        scope = _scope("websocket", WS_PATH, state, subprotocols=[SUBPROTOCOL])
        self._to_app.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.create_task(app(scope, self._to_app.get, self._from_app.put))

    async def accepted(self) -> None:
        async with asyncio.timeout(SECONDS):
            answer = await self._from_app.get()
        assert answer["type"] == "websocket.accept", answer

    async def send(self, frame: dict[str, Any]) -> None:
        await self._to_app.put({"type": "websocket.receive", "text": orjson.dumps(frame).decode()})

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(SECONDS):
            message = await self._from_app.get()
        assert message["type"] == "websocket.send", message
        frame: dict[str, Any] = orjson.loads(message["text"])
        return frame

    async def recv_until(self, kind: str) -> dict[str, Any]:
        for _ in range(50):
            frame = await self.recv()
            if frame["type"] == kind:
                return frame
        raise AssertionError(f"no {kind} frame")

    async def close(self) -> None:
        await self._to_app.put({"type": "websocket.disconnect", "code": 1000})
        async with asyncio.timeout(SECONDS):
            with contextlib.suppress(Exception):
                await self.task


# ------------------------------------------------------------------ the test


async def login(app: ASGIApp, state: Mapping[str, Any], phone: str) -> tuple[str, str, str]:
    status, _ = await call(app, state, "POST", "/v1/auth/otp", {"phone": phone})
    assert status == 202
    status, body = await call(app, state, "GET", "/v1/dev/otp", query={"phone": phone})
    assert status == 200, body
    device = f"dev-{phone[-4:]}"
    status, body = await call(
        app,
        state,
        "POST",
        "/v1/auth/verify",
        {"phone": phone, "code": body["code"], "device_id": device},
    )
    assert status == 200, body
    return body["user_id"], body["access_token"], device


async def authed(app: ASGIApp, state: Mapping[str, Any], token: str, device: str) -> Socket:
    socket = Socket(app, state)
    await socket.accepted()
    await socket.send({"type": "auth", "token": token, "device_id": device})
    ready = await socket.recv()
    assert ready["type"] == "ready", ready
    return socket


async def test_a_frame_sent_on_one_socket_arrives_on_another_users_socket() -> None:
    fakes = Fakes()
    settings = Settings(env="test", instance_id="graph-1", otp_sender="dev")
    app = create_app(settings, adapters=fakes.adapters)
    async with lifespan(app) as state:
        alice, alice_token, alice_device = await login(app, state, "+15550000001")
        bob, bob_token, bob_device = await login(app, state, "+15550000002")
        status, body = await call(
            app, state, "POST", "/v1/chats/direct", {"user_id": bob}, token=alice_token
        )
        assert status == 201, body
        chat_id = body["chat"]["chat_id"]
        to_alice = await authed(app, state, alice_token, alice_device)
        to_bob = await authed(app, state, bob_token, bob_device)
        await to_alice.send(
            {"type": "send_message", "chat_id": chat_id, "client_message_id": "m1", "text": "hi"}
        )
        ack = await to_alice.recv_until("send_ack")
        assert ack["sequence"] == 1
        pushed = await to_bob.recv_until("message")
        assert (pushed["chat_id"], pushed["sequence"], pushed["text"], pushed["sender_id"]) == (
            chat_id,
            1,
            "hi",
            alice,
        )
        status, body = await call(app, state, "GET", "/readyz")
        assert status == 200, body
        status, text = await call(app, state, "GET", "/metrics")
        assert status == 200
        assert "messaging_fanout_seconds_since_progress" in text
        await to_alice.close()
        await to_bob.close()
    assert fakes.log.committed.get(("fanout", fakes.log.partition_of(chat_id))) == 1
    assert fakes.letters.parked == []
    assert fakes.routes.routes.get(bob, {}) == {}  # the socket withdrew its route


async def test_a_message_reaches_a_socket_on_another_process_over_the_hand_off() -> None:
    fakes = Fakes()  # one log, route table, hand-off bus and database shared by two processes
    fakes.assigned["graph-b"] = ()  # every partition is the first's: Bob's copy goes by hand-off
    first = create_app(
        Settings(env="test", instance_id="graph-a", otp_sender="dev"), adapters=fakes.adapters
    )
    second = create_app(
        Settings(env="test", instance_id="graph-b", otp_sender="dev"), adapters=fakes.adapters
    )
    async with lifespan(first) as state_a, lifespan(second) as state_b:
        alice, alice_token, alice_device = await login(first, state_a, "+15550000003")
        bob, bob_token, bob_device = await login(first, state_a, "+15550000004")
        status, body = await call(
            first, state_a, "POST", "/v1/chats/direct", {"user_id": bob}, token=alice_token
        )
        assert status == 201, body
        chat_id = body["chat"]["chat_id"]
        # Bob's socket is on the second process.
        to_alice = await authed(first, state_a, alice_token, alice_device)
        to_bob = await authed(second, state_b, bob_token, bob_device)
        await to_alice.send(
            {"type": "send_message", "chat_id": chat_id, "client_message_id": "m1", "text": "yo"}
        )
        pushed = await to_bob.recv_until("message")
        assert (pushed["chat_id"], pushed["sequence"], pushed["sender_id"]) == (chat_id, 1, alice)
        await to_alice.close()
        await to_bob.close()
