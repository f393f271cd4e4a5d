"""RestClient against an httpx.MockTransport that plays the REST API spec."""

from __future__ import annotations

import json

import httpx
import pytest

from messaging.client import ClientApiError, ClientError, RestClient, ws_url_for

USER = "u_" + "1" * 32
OTHER = "u_" + "2" * 32
CHAT = {
    "chat_id": "d_" + "a" * 32,
    "kind": "direct",
    "title": "",
    "created_by": USER,
    "created_at_ms": 5,
    "head": 0,
}
MESSAGE = {
    "chat_id": CHAT["chat_id"],
    "sequence": 1,
    "sender_id": USER,
    "sender_device": "dev1",
    "client_message_id": "dev1-1",
    "text": "hi 👋",
    "created_at_ms": 7,
}


def api(request: httpx.Request) -> httpx.Response:
    path, method = request.url.path, request.method
    authed = request.headers.get("Authorization") == "Bearer tok"
    if (method, path) == ("POST", "/v1/auth/otp"):
        return httpx.Response(202, json={})
    if (method, path) == ("GET", "/v1/dev/otp"):
        return httpx.Response(200, json={"phone": request.url.params["phone"], "code": "123456"})
    if (method, path) == ("POST", "/v1/auth/verify"):
        body = json.loads(request.content)
        if body["code"] != "123456":
            return httpx.Response(
                401,
                json={"error": {"code": "invalid_code", "message": "wrong", "retriable": False}},
            )
        return httpx.Response(
            200,
            json={
                "access_token": "tok",
                "token_type": "Bearer",
                "expires_in": 3600,
                "user_id": USER,
                "device_id": body["device_id"],
            },
        )
    if not authed:
        return httpx.Response(
            401, json={"error": {"code": "unauthenticated", "message": "no", "retriable": False}}
        )
    if (method, path) == ("GET", "/v1/users/by-phone"):
        return httpx.Response(200, json={"user_id": OTHER, "phone": request.url.params["phone"]})
    if (method, path) == ("POST", "/v1/chats/direct"):
        return httpx.Response(201, json={"chat": CHAT})
    if (method, path) == ("POST", "/v1/chats/groups"):
        body = json.loads(request.content)
        return httpx.Response(
            201, json={"chat": {**CHAT, "chat_id": "g_" + "b" * 32, "kind": "group", **body}}
        )
    if (method, path) == ("GET", "/v1/chats"):
        summary = {
            **CHAT,
            "head": 3,
            "visible_head": 3,
            "joined_sequence": 0,
            "last_acked_sequence": 1,
            "unread": 2,
            "last_message_at_ms": 9,
        }
        return httpx.Response(200, json={"chats": [summary]})
    if method == "GET" and path.endswith("/messages"):
        assert dict(request.url.params) == {"after": "0", "limit": "50"}
        return httpx.Response(
            200,
            json={
                "chat_id": CHAT["chat_id"],
                "messages": [MESSAGE],
                "visible_head": 1,
                "has_more": False,
            },
        )
    if method == "POST" and path.endswith("/members"):
        return httpx.Response(200, json={"added": json.loads(request.content)["user_ids"]})
    if method == "DELETE" and "/members/" in path:
        return httpx.Response(204)
    if path == "/v1/broken":
        return httpx.Response(503, text="upstream down")
    return httpx.Response(
        404, json={"error": {"code": "not_found", "message": path, "retriable": False}}
    )


@pytest.fixture
async def rest():
    async with RestClient("http://127.0.0.1:9", transport=httpx.MockTransport(api)) as client:
        yield client


async def test_dev_login_then_chat_calls(rest: RestClient) -> None:
    with pytest.raises(ClientError, match="log in first"):
        await rest.list_chats()
    assert rest.ws_url == "ws://127.0.0.1:9/v1/ws"
    session = await rest.login_dev("+15550001", "dev1")
    assert (session.token, session.user_id, session.device_id) == ("tok", USER, "dev1")
    assert session.phone == "+15550001"
    assert session.expires_at > 0

    assert await rest.user_by_phone("+15550002") == OTHER
    direct = await rest.create_direct_chat(OTHER)
    assert (direct.chat_id, direct.kind, direct.head, direct.unread) == (
        CHAT["chat_id"],
        "direct",
        0,
        None,
    )
    group = await rest.create_group("team", [OTHER])
    assert (group.kind, group.title) == ("group", "team")
    [summary] = await rest.list_chats()
    assert (summary.last_acked_sequence, summary.unread, summary.visible_head) == (1, 2, 3)
    page = await rest.messages(CHAT["chat_id"], after=0, limit=50)
    assert [m.text for m in page.messages] == ["hi 👋"]
    assert (page.visible_head, page.has_more) == (1, False)
    assert await rest.add_members(group.chat_id, [OTHER]) == {"added": [OTHER]}
    await rest.remove_member(group.chat_id, OTHER)


async def test_errors_carry_code_and_retriable(rest: RestClient) -> None:
    await rest.request_otp("+15550001")
    with pytest.raises(ClientApiError) as caught:
        await rest.verify("+15550001", "000000", "dev1")
    assert (caught.value.status, caught.value.code, caught.value.retriable) == (
        401,
        "invalid_code",
        False,
    )
    await rest.verify("+15550001", "123456", "dev1")
    with pytest.raises(ClientApiError) as caught:
        await rest._call("GET", "/v1/broken")
    assert (caught.value.status, caught.value.code, caught.value.retriable) == (
        503,
        "http_503",
        True,
    )


def test_ws_url() -> None:
    assert ws_url_for("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/v1/ws"
    assert ws_url_for("https://example.org/api") == "wss://example.org/v1/ws"
    with pytest.raises(ValueError, match="not an http"):
        ws_url_for("ftp://x")
