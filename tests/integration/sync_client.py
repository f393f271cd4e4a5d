"""Synchronous protocol and REST clients for the Hypothesis-driven integration tests.

Hypothesis drives plain (sync) test functions, so these use httpx's sync client and
``websockets.sync.client`` instead of the async ones in :mod:`tests.integration.raw`. Also: the
documented codes (read from docs/protocol.md, so a code the server sends that the document does
not list fails a test), and a checker for the REST error body.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.harness import AppProcess
from tests.integration.raw import Account, new_device, random_phone

PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
FUZZ_ENV = "MESSAGING_TEST_FUZZ_EXAMPLES"


def fuzz_examples(default: int) -> int:
    """``default``, or ``MESSAGING_TEST_FUZZ_EXAMPLES`` when set (longer runs)."""
    return int(os.environ.get(FUZZ_ENV) or default)


def fuzz_derandomize() -> bool:
    """Brief default runs are the same every time; a long run explores new inputs."""
    return FUZZ_ENV not in os.environ


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each about as often as its weight says (``st.one_of`` favours
    its first branches, which in a brief derandomized run means mostly the first)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda n: table[n])


def _doc_table(heading: str) -> list[str]:
    """The first cells of the markdown table under ``heading`` in docs/protocol.md."""
    cells: list[str] = []
    inside = False
    for line in PROTOCOL_DOC.read_text().splitlines():
        if line.startswith("#"):
            inside = line.strip("# ").lower() == heading.lower()
            continue
        if inside and line.startswith("|"):
            cells.append(line.split("|")[1])
    return cells


def documented_error_codes() -> set[str]:
    """Every code of docs/protocol.md's ``error`` frame table (``error`` section)."""
    codes = {code for cell in _doc_table("`error`") for code in re.findall(r"`([a-z_]+)`", cell)}
    assert {"invalid_frame", "not_a_member"} <= codes, codes
    return codes


def documented_close_codes() -> set[int]:
    codes = {int(cell) for cell in _doc_table("Close codes") if cell.strip().isdigit()}
    assert {4000, 4001, 4003} <= codes, codes
    return codes


# ------------------------------------------------------------------ REST


def login(app: AppProcess, phone: str | None = None, device_id: str | None = None) -> Account:
    phone = phone or random_phone()
    device_id = device_id or new_device()
    with httpx.Client(base_url=app.base_url, timeout=10) as http:
        answer = http.post("/v1/auth/otp", json={"phone": phone})
        assert answer.status_code == 202, answer.text
        code = http.get("/v1/dev/otp", params={"phone": phone}).json()["code"]
        answer = http.post(
            "/v1/auth/verify", json={"phone": phone, "code": code, "device_id": device_id}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
    return Account(body["user_id"], body["access_token"], device_id, phone)


def check_error_body(response: httpx.Response) -> dict[str, Any]:
    """A 4xx body is exactly ``{"error": {"code", "message", "retriable"}}``; its ``error``."""
    assert response.headers.get("content-type", "").startswith("application/json"), response
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "retriable"}, body
    assert isinstance(error["code"], str)
    assert re.fullmatch(r"[a-z_]+", error["code"]), error
    assert isinstance(error["message"], str)
    assert isinstance(error["retriable"], bool)
    return dict(error)


def healthy(app: AppProcess) -> bool:
    assert app.proc is not None
    if app.proc.poll() is not None:
        return False
    return httpx.get(app.base_url + "/healthz", timeout=5).status_code == 200


# ------------------------------------------------------------------ WebSocket


class SyncSocket:
    def __init__(self, ws: ClientConnection, owner: ExitStack) -> None:
        self.ws = ws
        self.ready: dict[str, Any] = {}
        self._owner = owner

    def send(self, frame: dict[str, Any] | str | bytes) -> None:
        self.ws.send(orjson.dumps(frame).decode() if isinstance(frame, dict) else frame)

    def recv(self, seconds: float = 10.0) -> dict[str, Any]:
        data = orjson.loads(self.ws.recv(timeout=seconds))
        assert isinstance(data, dict), data
        return data

    def closed_with(self, seconds: float = 10.0) -> int | None:
        """Read until the server closes; its close code (None: dropped without one)."""
        try:
            while True:
                self.ws.recv(timeout=seconds)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None

    def close(self) -> None:
        self._owner.close()


def open_socket(app: AppProcess) -> SyncSocket:
    owner = ExitStack()  # websockets wants connect() entered as a context manager
    ws = owner.enter_context(connect(app.ws_url + "/v1/ws", max_size=None, open_timeout=10))
    return SyncSocket(ws, owner)


def authed(app: AppProcess, account: Account) -> SyncSocket:
    socket = open_socket(app)
    socket.send({"type": "auth", "token": account.token, "device_id": account.device_id})
    socket.ready = socket.recv()
    assert socket.ready["type"] == "ready", socket.ready
    return socket


@contextmanager
def session(app: AppProcess, account: Account) -> Iterator[SyncSocket]:
    socket = authed(app, account)
    try:
        yield socket
    finally:
        socket.close()


def send_and_ack(socket: SyncSocket, chat_id: str, client_message_id: str, text: str) -> int:
    """Send one message; its sequence once stored."""
    socket.send(
        {
            "type": "send_message",
            "chat_id": chat_id,
            "client_message_id": client_message_id,
            "text": text,
        }
    )
    while True:
        frame = socket.recv()
        if frame["type"] == "send_ack" and frame["client_message_id"] == client_message_id:
            return int(frame["sequence"])
        assert frame["type"] == "message", frame
