"""Authorization matrix: every REST endpoint and every WebSocket frame that names a chat, for
four callers who must not get at it, and no token in any log.

The scene: alice's group (a secret title; bob and carol in it) with 7 messages, carol removed by
alice after the 3rd, and alice's 1:1 chat with bob. The callers:

- ``non_member``: mallory, in neither chat;
- ``removed``: carol, removed from the group (``DELETE /v1/chats/{chat_id}/members/{user_id}``);
  she keeps read access up to her removal point (docs: "a removed member keeps read access up
  to ``removed_seq`` and nothing after it"), and nothing more;
- ``same_device``: eve, another user logged in with alice's device id (her token names alice's
  device); on the WebSocket also a token presented for another device than its own: 4003;
- ``expired``: alice's own token, re-signed with the development key and ``exp`` in the past.

Each refusal is checked for its exact status and code, and its body or frame for leaks: no chat
title, no member user id the caller did not send, no message text, no sequence past what the
caller may see. Then the stored state is unchanged.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import attrs
import httpx
import jwt
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from messaging.settings import DEV_JWT_SECRET
from tests.harness import AppProcess
from tests.integration.raw import (
    Account,
    Socket,
    authed,
    direct_chat,
    login,
    new_device,
    open_socket,
    rest,
)

REMOVAL_POINT = 3
HEAD = 7


def expired_token(token: str) -> str:
    """``token``'s claims (as tokens.py issues them: sub, did, sep, iat, exp, jti, iss, aud),
    signed with the development key, expired an hour ago."""
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) >= {"sub", "did", "sep", "iat", "exp", "jti", "iss", "aud"}, claims
    now = int(time.time())
    return jwt.encode(
        {**claims, "iat": now - 7200, "exp": now - 3600}, DEV_JWT_SECRET, algorithm="HS256"
    )


@attrs.frozen
class Scene:
    app: AppProcess
    alice: Account
    bob: Account
    callers: dict[str, Account]
    group: str
    direct: str
    title: str
    texts: tuple[str, ...]

    def secrets(self, *, allowed: str) -> list[str]:
        """What must not appear in an answer to a request whose text is ``allowed``."""
        ids = [a.user_id for a in (self.alice, self.bob, self.callers["removed"])]
        return [self.title, *self.texts, *(i for i in ids if i not in allowed)]


async def _send(socket: Socket, chat_id: str, text: str) -> int:
    cmid = f"seed-{uuid.uuid4().hex[:10]}"
    await socket.send(
        {"type": "send_message", "chat_id": chat_id, "client_message_id": cmid, "text": text}
    )
    return int((await socket.recv_until("send_ack"))["sequence"])


@pytest.fixture(scope="module")
async def scene(apps: list[AppProcess]) -> Scene:
    app = apps[0]
    alice, bob, carol, mallory = await asyncio.gather(*(login(app) for _ in range(4)))
    eve = await login(app, device_id=alice.device_id)  # another user, alice's device id
    marker = uuid.uuid4().hex[:12]
    title = f"secret-title-{marker}"
    created = await rest(
        app,
        alice,
        "POST",
        "/v1/chats/groups",
        {"title": title, "member_ids": [bob.user_id, carol.user_id]},
    )
    assert created.status_code == 201, created.text
    group = created.json()["chat"]["chat_id"]
    direct = await direct_chat(app, alice, bob)
    texts = tuple(f"secret-text-{n}-{marker}" for n in range(1, HEAD + 2))
    socket = await authed(app, alice)
    for n in range(REMOVAL_POINT):
        assert await _send(socket, group, texts[n]) == n + 1
    removed = await rest(app, alice, "DELETE", f"/v1/chats/{group}/members/{carol.user_id}")
    assert removed.json() == {"removed_after_sequence": REMOVAL_POINT}, removed.text
    for n in range(REMOVAL_POINT, HEAD):
        assert await _send(socket, group, texts[n]) == n + 1
    assert await _send(socket, direct, texts[HEAD]) == 1
    await socket.close()
    expired = attrs.evolve(alice, token=expired_token(alice.token))
    callers = {"non_member": mallory, "removed": carol, "same_device": eve, "expired": expired}
    return Scene(app, alice, bob, callers, group, direct, title, texts)


def assert_no_leak(scene: Scene, answer_text: str, request_text: str) -> None:
    for secret in scene.secrets(allowed=request_text):
        assert secret not in answer_text, (secret, answer_text)
    # No sequence past what a refused caller may see: the group's head is not named.
    assert not re.search(rf"(?<![\w.]){HEAD}(?![\w.])", answer_text), answer_text


async def assert_unchanged(scene: Scene) -> None:
    page = (await rest(scene.app, scene.alice, "GET", f"/v1/chats/{scene.group}/messages")).json()
    assert [m["text"] for m in page["messages"]] == list(scene.texts[:HEAD])
    members = await rest(scene.app, scene.alice, "GET", f"/v1/chats/{scene.group}/members")
    assert members.json() == {"members": sorted([scene.alice.user_id, scene.bob.user_id])}
    page = (await rest(scene.app, scene.bob, "GET", f"/v1/chats/{scene.direct}/messages")).json()
    assert [m["text"] for m in page["messages"]] == [scene.texts[HEAD]]


# ------------------------------------------------------------------ REST

ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/chats/{chat}/members", None),
    ("POST", "/v1/chats/{chat}/members", {"user_ids": ["{caller}"]}),
    ("DELETE", "/v1/chats/{chat}/members/{bob}", None),
    ("DELETE", "/v1/chats/{chat}/members/{caller}", None),
    ("GET", "/v1/chats/{chat}/messages", None),
    ("GET", "/v1/chats/{chat}/messages?after=0&limit=100", None),
    ("GET", f"/v1/chats/{{chat}}/messages?before={HEAD + 1}&limit=1", None),
]
CALLERS = ["non_member", "removed", "same_device", "expired"]


def _fill(template: str, scene: Scene, chat: str, caller: Account) -> str:
    chat_id = scene.group if chat == "group" else scene.direct
    return (
        template.replace("{chat}", chat_id)
        .replace("{bob}", scene.bob.user_id)
        .replace("{caller}", caller.user_id)
    )


@pytest.mark.parametrize("chat", ["group", "direct"])
@pytest.mark.parametrize("caller_name", CALLERS)
@pytest.mark.parametrize(("method", "template", "body"), ENDPOINTS)
async def test_rest_chat_endpoints_refuse(
    scene: Scene,
    method: str,
    template: str,
    body: dict[str, Any] | None,
    caller_name: str,
    chat: str,
) -> None:
    caller = scene.callers[caller_name]
    path = _fill(template, scene, chat, caller)
    content = None if body is None else _fill(orjson.dumps(body).decode(), scene, chat, caller)
    async with httpx.AsyncClient(base_url=scene.app.base_url, timeout=10) as http:
        answer = await http.request(
            method,
            path,
            content=content,
            headers={**caller.headers, "content-type": "application/json"},
        )
    request_text = path + (content or "")
    if caller_name == "expired":
        expected = (401, "token_expired")
    elif caller_name == "removed" and chat == "group" and method == "GET" and "messages" in path:
        expected = (200, "")  # read access up to her removal point, and nothing after it
    elif caller_name == "removed" and chat == "group":
        expected = (403, "not_a_member")  # she knows the chat exists
    else:
        expected = (404, "not_found")  # as for a chat that does not exist
    error = answer.json().get("error", {}) if answer.status_code >= 400 else {}
    assert (answer.status_code, error.get("code", "")) == expected, answer.text
    if answer.status_code == 200:
        page = answer.json()
        assert page["visible_head"] == REMOVAL_POINT
        assert all(m["sequence"] <= REMOVAL_POINT for m in page["messages"]), page
        assert scene.title not in answer.text
        for text in scene.texts[REMOVAL_POINT:]:
            assert text not in answer.text
    else:
        assert set(answer.json()) == {"error"}
        assert set(error) == {"code", "message", "retriable"}
        assert_no_leak(scene, answer.text, request_text)
    if answer.status_code == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer")
    await assert_unchanged(scene)


NO_CHAT_ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/chats", None),
    ("GET", "/v1/auth/session", None),
    ("GET", "/v1/users/by-phone?phone=%2B15550000000", None),
    ("POST", "/v1/chats/direct", {"user_id": "{bob}"}),
    ("POST", "/v1/chats/groups", {"title": "t", "member_ids": []}),
    ("POST", "/v1/auth/logout", None),
]


@pytest.mark.parametrize(("method", "template", "body"), NO_CHAT_ENDPOINTS)
async def test_an_expired_token_is_refused_everywhere(
    scene: Scene, method: str, template: str, body: dict[str, Any] | None
) -> None:
    caller = scene.callers["expired"]
    path = _fill(template, scene, "group", caller)
    content = None if body is None else _fill(orjson.dumps(body).decode(), scene, "group", caller)
    async with httpx.AsyncClient(base_url=scene.app.base_url, timeout=10) as http:
        answer = await http.request(
            method,
            path,
            content=content,
            headers={**caller.headers, "content-type": "application/json"},
        )
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "token_expired"
    assert_no_leak(scene, answer.text, path + (content or ""))
    # alice's session is not ended by her expired token's logout, nor anything created
    session = await rest(scene.app, scene.alice, "GET", "/v1/auth/session")
    assert session.status_code == 200, session.text
    await assert_unchanged(scene)


async def test_another_users_token_on_this_device_gives_that_user_only(scene: Scene) -> None:
    eve = scene.callers["same_device"]
    assert eve.device_id == scene.alice.device_id
    chats = await rest(scene.app, eve, "GET", "/v1/chats")
    assert chats.status_code == 200
    assert chats.json() == {"chats": []}
    session = (await rest(scene.app, eve, "GET", "/v1/auth/session")).json()
    assert session["user_id"] == eve.user_id
    # alice's own session on that device is untouched by eve's login there
    assert (await rest(scene.app, scene.alice, "GET", "/v1/auth/session")).status_code == 200


# ------------------------------------------------------------------ WebSocket


def _frames(chat_id: str) -> dict[str, dict[str, Any]]:
    return {
        "send": {
            "type": "send_message",
            "chat_id": chat_id,
            "client_message_id": f"authz-{uuid.uuid4().hex[:8]}",
            "text": "intrusion",
        },
        "ack": {"type": "ack", "chat_id": chat_id, "sequence": 1},
        "ack_past_head": {"type": "ack", "chat_id": chat_id, "sequence": HEAD},
        "sync": {
            "type": "sync_request",
            "chats": [{"chat_id": chat_id, "last_acked_sequence": 0}],
        },
    }


TERMINAL = {"error", "acked", "send_ack", "sync_complete"}


async def _answers(socket: Socket) -> list[dict[str, Any]]:
    """The frames answering one frame (up to its error, ack or sync_complete), then any frame
    that arrives before the answer to a ping sent after it."""
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["type"] not in TERMINAL:
        frames.append(await socket.recv())
    marker = uuid.uuid4().hex
    await socket.send({"type": "ping", "id": marker})
    while True:
        frame = await socket.recv()
        if frame == {**frame, "type": "pong", "id": marker}:
            return frames
        frames.append(frame)


@pytest.mark.parametrize("chat", ["group", "direct"])
@pytest.mark.parametrize("caller_name", ["non_member", "removed", "same_device"])
@pytest.mark.parametrize("kind", ["send", "ack", "ack_past_head", "sync"])
async def test_ws_frames_naming_a_chat_refuse(
    scene: Scene, kind: str, caller_name: str, chat: str
) -> None:
    caller = scene.callers[caller_name]
    chat_id = scene.group if chat == "group" else scene.direct
    socket = await authed(scene.app, caller)
    assert socket.ready["user_id"] == caller.user_id
    frame = _frames(chat_id)[kind]
    await socket.send(frame)
    answers = await _answers(socket)
    await socket.close()
    request_text = orjson.dumps(frame).decode()
    if caller_name == "removed" and chat == "group" and kind != "send":
        # Read access up to her removal point: acks up to it, a replay that stops there.
        if kind == "ack":
            assert [a["type"] for a in answers] == ["acked"], answers
            assert 1 <= answers[0]["last_acked_sequence"] <= REMOVAL_POINT
        elif kind == "ack_past_head":
            assert [(a["type"], a["code"]) for a in answers] == [("error", "invalid_input")]
            assert re.findall(r"head (\d+)", answers[0]["message"]) == [str(REMOVAL_POINT)]
        else:
            replayed = [(a["sequence"], a["text"]) for a in answers if a["type"] == "message"]
            assert replayed == list(enumerate(scene.texts[:REMOVAL_POINT], start=1))
            assert answers[-1] == {
                "type": "sync_complete",
                "chat_id": chat_id,
                "head": REMOVAL_POINT,
            }
        for answer in answers:
            assert scene.title not in orjson.dumps(answer).decode()
            assert answer.get("sequence", 0) <= REMOVAL_POINT
    else:
        code = "not_a_member" if caller_name == "removed" and chat == "group" else "not_found"
        assert [(a["type"], a["code"]) for a in answers] == [("error", code)], answers
        ref = answers[0]["ref"]
        assert ref["chat_id"] == chat_id
        if kind == "send":
            assert ref == {"chat_id": chat_id, "client_message_id": frame["client_message_id"]}
        assert_no_leak(scene, orjson.dumps(answers).decode(), request_text)
    await assert_unchanged(scene)


@pytest.mark.parametrize("kind", ["send", "ack", "sync"])
@pytest.mark.parametrize(
    ("case", "close_code"), [("expired", 4001), ("other_device", 4003), ("foreign_token", 4003)]
)
async def test_ws_unauthenticated_callers_get_a_close_code_and_no_chat_data(
    scene: Scene, kind: str, case: str, close_code: int
) -> None:
    if case == "expired":
        token, device_id = scene.callers["expired"].token, scene.alice.device_id
    elif case == "other_device":  # alice's token, presented for another device
        token, device_id = scene.alice.token, new_device()
    else:  # mallory's token, presented for alice's device
        token, device_id = scene.callers["non_member"].token, scene.alice.device_id
    socket = await open_socket(scene.app)
    # the chat frame right behind the auth frame: it must not be served
    await socket.send({"type": "auth", "token": token, "device_id": device_id})
    await socket.send(_frames(scene.group)[kind])
    received: list[str] = []
    code = None
    try:
        async with asyncio.timeout(10):
            while True:
                received.append(str(await socket.ws.recv()))
    except ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else None
    assert code == close_code
    assert received == []
    await socket.close()
    await assert_unchanged(scene)


# ------------------------------------------------------------------ tokens and logs


@pytest.mark.parametrize("extra_app", [{"PYTHONUNBUFFERED": "1"}], indirect=True)
async def test_no_token_reaches_the_log(extra_app: AppProcess, apps: list[AppProcess]) -> None:
    app = extra_app
    alice, bob = await asyncio.gather(login(app), login(app))
    expired = expired_token(alice.token)
    garbage = f"not-a-jwt-{uuid.uuid4().hex}"
    tampered = alice.token[:-4] + ("AAAA" if not alice.token.endswith("AAAA") else "BBBB")
    # REST: good, garbage, tampered, expired tokens
    chat_id = await direct_chat(app, alice, bob)
    for token in (alice.token, garbage, tampered, expired):
        for path in ("/v1/chats", f"/v1/chats/{chat_id}/messages", "/v1/auth/session"):
            await rest(app, attrs.evolve(alice, token=token), "GET", path)
    # WebSocket: one good auth, and each kind of failed one
    socket = await authed(app, alice)
    await socket.send({"type": "auth", "token": alice.token, "device_id": alice.device_id})
    await socket.recv_until("error")
    await socket.close()
    for token, device_id in [
        (garbage, alice.device_id),
        (tampered, alice.device_id),
        (expired, alice.device_id),
        (alice.token, new_device()),
        (bob.token, alice.device_id),
    ]:
        socket = await open_socket(app)
        await socket.send({"type": "auth", "token": token, "device_id": device_id})
        assert await socket.closed_with() in (4001, 4003)
    # a logged-out session presented again
    await rest(app, alice, "POST", "/v1/auth/logout")
    socket = await open_socket(app)
    await socket.send({"type": "auth", "token": alice.token, "device_id": alice.device_id})
    assert await socket.closed_with() == 4001
    await asyncio.sleep(0.5)
    log = app.log_path.read_text(errors="replace")
    # the log is the right one and is written: it saw these logins and requests
    assert alice.user_id in log
    assert "/v1/auth/session" in log
    secrets = [garbage]
    for token in (alice.token, bob.token, expired, tampered):
        secrets += [token, token.rsplit(".", 1)[-1]]  # the whole token, and its signature
    # (counted, not compared, so that a failure does not print the tokens and the whole log)
    assert sum(secret in log for secret in secrets) == 0, f"a token is in {app.log_path}"
    # and none of the shared apps' logs has any of them either
    for shared in apps:
        text = shared.log_path.read_text(errors="replace")
        assert sum(secret in text for secret in secrets) == 0, f"a token is in {shared.log_path}"
