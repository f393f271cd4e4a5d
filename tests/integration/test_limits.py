"""Abuse limits (ADR 0010) on a real app process with low limits: each limit is hit and answers
its documented code, normal use under it goes through, and /metrics counts the refusals.

Client addresses other than 127.0.0.1 are simulated with ``X-Forwarded-For``, which the app
trusts from 127.0.0.1 only (``MESSAGING_FORWARDED_ALLOW_IPS``)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from messaging.settings import Settings, env_var
from tests.harness import AppProcess
from tests.integration.conftest import app_env
from tests.integration.raw import (
    authed,
    direct_chat,
    group_chat,
    login,
    open_socket,
    rest,
)

ALLOWED_ORIGIN = "https://chat.example.com"


def send(chat: str, client_message_id: str, text: str) -> dict[str, str]:
    return {
        "type": "send_message",
        "chat_id": chat,
        "client_message_id": client_message_id,
        "text": text,
    }


def _address() -> str:
    """A client address of its own, so that tests do not share per-address budgets."""
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"


@pytest.fixture(scope="module")
def limited(stack: Settings) -> Iterator[AppProcess]:
    env = {
        **app_env(stack),
        env_var("limit_sends_per_second"): "1",
        env_var("limit_sends_burst"): "3",
        env_var("limit_syncs_per_minute"): "3",
        env_var("limit_connections_per_user"): "2",
        env_var("limit_connections_per_address"): "6",
        env_var("limit_chats_per_user"): "2",
        env_var("max_group_members"): "3",
        env_var("max_text_bytes"): "10",
        env_var("ws_max_frame_bytes"): "1024",
        env_var("allowed_origins"): ALLOWED_ORIGIN,
    }
    app = AppProcess("limited", env).start()
    yield app
    app.terminate()


@pytest.fixture(scope="module")
def rest_limited(stack: Settings) -> Iterator[AppProcess]:
    env = {
        **app_env(stack),
        env_var("limit_rest_per_second_per_address"): "0.5",
        env_var("limit_rest_burst_per_address"): "5",
    }
    app = AppProcess("rest-limited", env).start()
    yield app
    app.terminate()


async def rejections(app: AppProcess, limit: str) -> float:
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    found = re.search(rf'^messaging_limit_rejections_total{{limit="{limit}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


# ------------------------------------------------------------------ WebSocket limits


async def test_sends_over_the_per_user_rate_get_rate_limited_and_are_not_stored(
    limited: AppProcess,
) -> None:
    a, b = await login(limited), await login(limited)
    chat = await direct_chat(limited, a, b)
    socket = await authed(limited, a)
    before = await rejections(limited, "sends")
    for n in range(3):  # the burst: normal use goes through
        await socket.send(
            {
                "type": "send_message",
                "chat_id": chat,
                "client_message_id": f"m{n}",
                "text": f"hi {n}",
            }
        )
        assert (await socket.recv_until("send_ack"))["client_message_id"] == f"m{n}"
    await socket.send(send(chat, "m3", "x"))
    error = await socket.recv_until("error")
    assert error["code"] == "rate_limited"
    assert error["retriable"] is True
    assert error["ref"] == {"chat_id": chat, "client_message_id": "m3"}
    assert 0 < error["retry_after_ms"] <= 1000
    assert await rejections(limited, "sends") == before + 1
    history = (await rest(limited, a, "GET", f"/v1/chats/{chat}/messages")).json()
    assert [m["client_message_id"] for m in history["messages"]] == ["m0", "m1", "m2"]
    # After the advised wait, the same send goes through.
    await asyncio.sleep(error["retry_after_ms"] / 1000 + 0.05)
    await socket.send(send(chat, "m3", "x"))
    ack = await socket.recv_until("send_ack")
    assert (ack["client_message_id"], ack["sequence"]) == ("m3", 4)


async def test_sync_requests_over_the_per_user_rate_get_rate_limited_in_order(
    limited: AppProcess,
) -> None:
    a, b = await login(limited), await login(limited)
    chat = await direct_chat(limited, a, b)
    socket = await authed(limited, a)
    request = {"type": "sync_request", "chats": [{"chat_id": chat, "last_acked_sequence": 0}]}
    for _ in range(3):
        await socket.send(request)
    for _ in range(3):
        assert (await socket.recv_until("sync_complete"))["chat_id"] == chat
    await socket.send(request)
    error = await socket.recv_until("error")
    assert error["code"] == "rate_limited"
    assert error["ref"] == {"sync": True, "chat_ids": [chat]}
    assert error["retry_after_ms"] > 0
    assert await rejections(limited, "syncs") >= 1


async def test_a_third_connection_of_one_user_is_closed_4029(limited: AppProcess) -> None:
    a = await login(limited)
    # Three devices of one user (a device's new connection would supersede its old one).
    a2, a3 = await login(limited, a.phone), await login(limited, a.phone)
    first, second = await authed(limited, a), await authed(limited, a2)
    before = await rejections(limited, "connections_per_user")
    third = await open_socket(limited)
    await third.send({"type": "auth", "token": a3.token, "device_id": a3.device_id})
    assert await third.closed_with() == 4029
    assert await rejections(limited, "connections_per_user") == before + 1
    await first.send({"type": "ping", "id": "still-here"})
    assert (await first.recv_until("pong"))["id"] == "still-here"
    # A closed connection frees its place.
    await second.close()
    await asyncio.sleep(0.3)
    again = await authed(limited, a3)
    assert again.ready["type"] == "ready"


async def test_connections_per_client_address_are_bounded_4029(limited: AppProcess) -> None:
    address = {"X-Forwarded-For": _address()}
    users = [await login(limited) for _ in range(3)]
    accounts = [*users, *[await login(limited, user.phone) for user in users]]  # 2 devices each
    sockets = [await authed(limited, account, additional_headers=address) for account in accounts]
    assert len(sockets) == 6
    before = await rejections(limited, "connections_per_address")
    # Refused before authentication: no user needed.
    extra = await open_socket(limited, additional_headers=address)
    assert await extra.closed_with() == 4029
    assert await rejections(limited, "connections_per_address") == before + 1
    # Another address is not affected.
    other_address = {"X-Forwarded-For": _address()}
    other = await authed(limited, await login(limited), additional_headers=other_address)
    await other.close()


async def test_a_frame_over_the_size_limit_gets_an_error_and_the_connection_lives(
    limited: AppProcess,
) -> None:
    socket = await authed(limited, await login(limited))
    before = await rejections(limited, "frame_bytes")
    await socket.send('{"type":"ping","id":"' + "x" * 1100 + '"}')
    assert (await socket.recv_until("error"))["code"] == "frame_too_large"
    await socket.send({"type": "ping", "id": "small"})
    assert (await socket.recv_until("pong"))["id"] == "small"
    assert await rejections(limited, "frame_bytes") == before + 1


async def test_text_over_the_byte_limit_is_refused_and_text_at_it_is_stored(
    limited: AppProcess,
) -> None:
    a, b = await login(limited), await login(limited)
    chat = await direct_chat(limited, a, b)
    socket = await authed(limited, a)
    before = await rejections(limited, "text_bytes")
    await socket.send(send(chat, "big", "é" * 6))
    error = await socket.recv_until("error")
    assert (error["code"], error["retriable"]) == ("limit_exceeded", False)
    assert "12 bytes" in error["message"]
    await socket.send(send(chat, "ok", "é" * 5))
    assert (await socket.recv_until("send_ack"))["sequence"] == 1
    assert await rejections(limited, "text_bytes") == before + 1


# ------------------------------------------------------------------ chats and groups


async def test_chats_per_user_are_bounded_and_existing_chats_stay_reachable(
    limited: AppProcess,
) -> None:
    a, b, c, d = [await login(limited) for _ in range(4)]
    first = await direct_chat(limited, a, b)
    await direct_chat(limited, a, c)
    before = await rejections(limited, "chats_per_user")
    answer = await rest(limited, a, "POST", "/v1/chats/direct", {"user_id": d.user_id})
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "limit_exceeded"
    assert a.user_id in answer.json()["error"]["message"]
    # Opening a chat one is already in is not a new chat.
    again = await rest(limited, a, "POST", "/v1/chats/direct", {"user_id": b.user_id})
    assert again.status_code == 200
    assert again.json()["chat"]["chat_id"] == first
    # Nor can someone else add a full user to a group.
    answer = await rest(
        limited, d, "POST", "/v1/chats/groups", {"title": "g", "member_ids": [a.user_id]}
    )
    assert (answer.status_code, answer.json()["error"]["code"]) == (422, "limit_exceeded")
    assert await rejections(limited, "chats_per_user") == before + 2


async def test_groups_are_bounded_in_members(limited: AppProcess) -> None:
    owner, *others = [await login(limited) for _ in range(4)]
    before = await rejections(limited, "group_members")
    too_big = await rest(
        limited,
        owner,
        "POST",
        "/v1/chats/groups",
        {"title": "g", "member_ids": [o.user_id for o in others]},
    )
    assert (too_big.status_code, too_big.json()["error"]["code"]) == (422, "limit_exceeded")
    chat = await group_chat(limited, owner, others[:2])  # three members: at the limit
    answer = await rest(
        limited, owner, "POST", f"/v1/chats/{chat}/members", {"user_ids": [others[2].user_id]}
    )
    assert (answer.status_code, answer.json()["error"]["code"]) == (422, "limit_exceeded")
    assert await rejections(limited, "group_members") == before + 2


# ------------------------------------------------------------------ REST per address


async def test_rest_requests_per_address_get_429_with_retry_after(rest_limited: AppProcess) -> None:
    address = {"X-Forwarded-For": _address()}
    async with httpx.AsyncClient(base_url=rest_limited.base_url, timeout=10) as http:
        for _ in range(5):  # the burst
            assert (await http.get("/v1/chats", headers=address)).status_code == 401
        refused = await http.get("/v1/chats", headers=address)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "2"
        assert refused.json()["error"] == {
            "code": "rate_limited",
            "message": "too many requests from your address; retry in 2 s",
            "retriable": True,
        }
        # Probes are exempt; other addresses have their own budget.
        assert (await http.get("/healthz", headers=address)).status_code == 200
        other = {"X-Forwarded-For": _address()}
        assert (await http.get("/v1/chats", headers=other)).status_code == 401
    assert await rejections(rest_limited, "rest_per_address") == 1


async def test_normal_rest_use_stays_under_the_address_limit(rest_limited: AppProcess) -> None:
    address = {"X-Forwarded-For": _address()}
    async with httpx.AsyncClient(base_url=rest_limited.base_url, timeout=10) as http:
        for _ in range(3):
            assert (await http.get("/v1/chats", headers=address)).status_code == 401
            await asyncio.sleep(2.05)  # 0.5 requests/s sustained


# ------------------------------------------------------------------ origins and headers


async def test_a_websocket_from_a_foreign_origin_is_refused_before_the_handshake(
    limited: AppProcess,
) -> None:
    before = await rejections(limited, "origin")
    with pytest.raises(InvalidStatus) as refused:
        await open_socket(limited, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    assert await rejections(limited, "origin") == before + 1
    for origin in (ALLOWED_ORIGIN, f"http://127.0.0.1:{limited.port}", None):
        socket = await authed(limited, await login(limited), origin=origin)
        await socket.close()


async def test_cors_is_answered_for_allowed_origins_only(limited: AppProcess) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    async with httpx.AsyncClient(base_url=limited.base_url, timeout=10) as http:
        ok = await http.options("/v1/chats/direct", headers={"Origin": ALLOWED_ORIGIN, **preflight})
        assert ok.status_code == 200
        assert ok.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        bad = await http.options(
            "/v1/chats/direct", headers={"Origin": "https://evil.example", **preflight}
        )
        assert bad.status_code == 400
        assert "Access-Control-Allow-Origin" not in bad.headers
        simple = await http.get("/v1/chats", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in simple.headers


async def test_no_cors_headers_without_configured_origins(apps: list[AppProcess]) -> None:
    async with httpx.AsyncClient(base_url=apps[0].base_url, timeout=10) as http:
        answer = await http.get("/v1/chats", headers={"Origin": "https://chat.example.com"})
    assert "Access-Control-Allow-Origin" not in answer.headers


async def test_rest_and_page_answers_carry_security_headers(apps: list[AppProcess]) -> None:
    account = await login(apps[0])
    async with httpx.AsyncClient(base_url=apps[0].base_url, timeout=10) as http:
        api = await http.get("/v1/chats", headers=account.headers)
        refused = await http.get("/v1/chats")
        page = await http.get("/")
    for answer in (api, refused):
        assert answer.headers["Content-Security-Policy"] == (
            "default-src 'none'; frame-ancestors 'none'"
        )
        assert answer.headers["Cache-Control"] == "no-store"
    for answer in (api, refused, page):
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        assert answer.headers["X-Frame-Options"] == "DENY"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy


async def test_a_device_reconnecting_supersedes_its_old_connection_4004(
    limited: AppProcess,
) -> None:
    """ADR 0034: a new connection of the same device replaces the old one, which is closed
    with 4004 and does not count against the per-user limit (here 2) any more: the device's
    reconnect fits even when its old socket is still open beside another device's."""
    a = await login(limited)
    other_device = await login(limited, a.phone)
    old, other = await authed(limited, a), await authed(limited, other_device)
    new = await authed(limited, a)
    assert new.ready["type"] == "ready"
    assert await old.closed_with() == 4004
    for socket in (new, other):
        await socket.send({"type": "ping", "id": "alive"})
        assert (await socket.recv_until("pong"))["id"] == "alive"
    for socket in (new, other):
        await socket.close()
