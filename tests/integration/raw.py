"""A raw protocol-v1 test client: exact frames and close codes, no client-side smarts (the
library in ``messaging.client`` adds ordering, dedupe and retries; these tests check the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from typing import Any

import attrs
import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConcurrencyError, ConnectionClosed

from tests.harness import AppProcess


def random_phone() -> str:
    return "+1555" + "".join(random.choice("0123456789") for _ in range(7))


def new_device() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@attrs.frozen
class Account:
    user_id: str
    token: str
    device_id: str
    phone: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


async def login(app: AppProcess, phone: str | None = None, device_id: str | None = None) -> Account:
    phone = phone or random_phone()
    device_id = device_id or new_device()
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        answer = await http.post("/v1/auth/otp", json={"phone": phone})
        assert answer.status_code == 202, answer.text
        code = (await http.get("/v1/dev/otp", params={"phone": phone})).json()["code"]
        answer = await http.post(
            "/v1/auth/verify", json={"phone": phone, "code": code, "device_id": device_id}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
    return Account(body["user_id"], body["access_token"], device_id, phone)


async def rest(
    app: AppProcess, account: Account, method: str, path: str, json: Any = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        return await http.request(method, path, json=json, headers=account.headers)


async def direct_chat(app: AppProcess, a: Account, b: Account) -> str:
    answer = await rest(app, a, "POST", "/v1/chats/direct", {"user_id": b.user_id})
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["chat"]["chat_id"])


async def group_chat(app: AppProcess, owner: Account, members: list[Account]) -> str:
    answer = await rest(
        app,
        owner,
        "POST",
        "/v1/chats/groups",
        {"title": "group", "member_ids": [m.user_id for m in members]},
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["chat"]["chat_id"])


OPEN: set[Socket] = set()
"""Sockets not closed yet; the integration conftest closes leftovers after each test."""


class Socket:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ready: dict[str, Any] = {}
        OPEN.add(self)

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        if isinstance(frame, dict):
            await self.ws.send(orjson.dumps(frame).decode())
        else:
            await self.ws.send(frame)

    async def recv(self, seconds: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(seconds):
            data = orjson.loads(await self.ws.recv())
        assert isinstance(data, dict)
        return data

    async def recv_until(self, kind: str, seconds: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(seconds):
            while True:
                frame = await self.recv(seconds)
                if frame["type"] == kind:
                    return frame

    async def closed_with(self, seconds: float = 10.0) -> int | None:
        """Read until the server closes; the close code."""
        try:
            async with asyncio.timeout(seconds):
                while True:
                    await self.ws.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None

    async def close(self) -> None:
        """The closing handshake, reading and dropping what is still unread meanwhile: a
        client whose receive queue is full stops reading the socket, never sees the server's
        close frame behind the unread messages and would wait out the 10 s close timeout."""
        OPEN.discard(self)
        unread = asyncio.create_task(self._drop_unread())
        try:
            await self.ws.close()
        finally:
            unread.cancel()
            await asyncio.gather(unread, return_exceptions=True)

    async def _drop_unread(self) -> None:
        # ConcurrencyError: another task of the test is reading this socket; it drains it.
        with contextlib.suppress(ConnectionClosed, ConcurrencyError):
            while True:
                await self.ws.recv()


async def open_socket(app: AppProcess, **kwargs: Any) -> Socket:
    return Socket(await connect(app.ws_url + "/v1/ws", max_size=None, **kwargs))


async def authed(app: AppProcess, account: Account, **kwargs: Any) -> Socket:
    socket = await open_socket(app, **kwargs)
    await socket.send({"type": "auth", "token": account.token, "device_id": account.device_id})
    socket.ready = await socket.recv()
    assert socket.ready["type"] == "ready", socket.ready
    return socket
