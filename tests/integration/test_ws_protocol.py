"""Protocol v1 on real app processes: authentication close codes, error frames that leave the
connection alive, membership rules, idempotent sends, multi-device and multi-process delivery."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import jwt
import pytest

from messaging.settings import DEV_JWT_SECRET
from tests.harness import AppProcess
from tests.integration.raw import (
    authed,
    direct_chat,
    group_chat,
    login,
    new_device,
    open_socket,
    rest,
)

# ------------------------------------------------------------------ authentication


async def test_no_auth_frame_in_time_closes_4008(apps: list[AppProcess]) -> None:
    socket = await open_socket(apps[0])
    assert await socket.closed_with(seconds=5) == 4008


async def test_a_first_frame_that_is_not_auth_closes_4001(apps: list[AppProcess]) -> None:
    socket = await open_socket(apps[0])
    await socket.send({"type": "ping"})
    assert await socket.closed_with() == 4001


@pytest.mark.parametrize("token", ["garbage", "a.b.c"])
async def test_a_bad_token_closes_4001(apps: list[AppProcess], token: str) -> None:
    socket = await open_socket(apps[0])
    await socket.send({"type": "auth", "token": token, "device_id": new_device()})
    assert await socket.closed_with() == 4001


async def test_an_expired_token_closes_4001(apps: list[AppProcess]) -> None:
    account = await login(apps[0])
    now = int(time.time())
    expired = jwt.encode(
        {
            "sub": account.user_id,
            "did": account.device_id,
            "sep": 1,
            "iat": now - 7200,
            "exp": now - 3600,
            "jti": "x",
            "iss": "messaging",
            "aud": "messaging",
        },
        DEV_JWT_SECRET,
        algorithm="HS256",
    )
    socket = await open_socket(apps[0])
    await socket.send({"type": "auth", "token": expired, "device_id": account.device_id})
    assert await socket.closed_with() == 4001


async def test_a_token_for_another_device_closes_4003(apps: list[AppProcess]) -> None:
    account = await login(apps[0])
    socket = await open_socket(apps[1])
    await socket.send({"type": "auth", "token": account.token, "device_id": new_device()})
    assert await socket.closed_with() == 4003


async def test_a_superseded_session_closes_4001(apps: list[AppProcess]) -> None:
    first = await login(apps[0])
    await login(apps[0], phone=first.phone, device_id=first.device_id)  # a newer login
    socket = await open_socket(apps[0])
    await socket.send({"type": "auth", "token": first.token, "device_id": first.device_id})
    assert await socket.closed_with() == 4001


# ------------------------------------------------------------------ bad frames


async def test_bad_frames_get_error_frames_and_the_connection_survives(
    apps: list[AppProcess],
) -> None:
    socket = await authed(apps[0], await login(apps[0]))
    cases: list[tuple[object, str]] = [
        ("not json", "invalid_frame"),
        ("[1, 2]", "invalid_frame"),
        ({"type": "teleport"}, "unknown_type"),
        ({"type": "send_message", "chat_id": 5}, "invalid_frame"),
        ({"type": "ack", "chat_id": "d_x", "sequence": -1}, "invalid_frame"),
        (
            {
                "type": "send_message",
                "chat_id": "d_x",
                "client_message_id": "a",
                "text": "x" * 20_000,
            },
            "frame_too_large",
        ),
        (b"\x00binary", "binary_not_supported"),
    ]
    for frame, code in cases:
        await socket.send(frame)  # type: ignore[arg-type]
        answer = await socket.recv()
        assert (answer["type"], answer["code"]) == ("error", code), (frame, answer)
    await socket.send({"type": "ping", "id": "still-alive"})
    assert (await socket.recv())["id"] == "still-alive"
    await socket.close()


async def test_a_flood_of_bad_frames_closes_4000(apps: list[AppProcess]) -> None:
    socket = await authed(apps[0], await login(apps[0]))
    for _ in range(25):
        await socket.send("{")
    assert await socket.closed_with() == 4000


# ------------------------------------------------------------------ membership and sends


async def test_frames_for_a_chat_you_are_not_in_are_refused(apps: list[AppProcess]) -> None:

    alice, bob, mallory = await asyncio.gather(login(apps[0]), login(apps[0]), login(apps[1]))
    chat_id = await direct_chat(apps[0], alice, bob)
    socket = await authed(apps[1], mallory)
    await socket.send(
        {"type": "send_message", "chat_id": chat_id, "client_message_id": "m1", "text": "hi"}
    )
    # Never a member: the same answer as for a chat that does not exist (an outsider must not
    # learn whether alice and bob have a 1:1 chat: its id derives from their user ids).
    refused = await socket.recv()
    assert (refused["code"], refused["ref"]) == (
        "not_found",
        {"chat_id": chat_id, "client_message_id": "m1"},
    )
    await socket.send({"type": "ack", "chat_id": chat_id, "sequence": 0})
    assert (await socket.recv())["code"] == "not_found"
    await socket.send(
        {"type": "sync_request", "chats": [{"chat_id": chat_id, "last_acked_sequence": 0}]}
    )
    refused = await socket.recv()
    assert (refused["code"], refused["ref"]) == ("not_found", {"sync": True, "chat_id": chat_id})
    answer = await rest(apps[1], mallory, "GET", f"/v1/chats/{chat_id}/messages")
    missing = "d_" + "0" * 32
    unknown = await rest(apps[1], mallory, "GET", f"/v1/chats/{missing}/messages")
    assert (answer.status_code, unknown.status_code) == (404, 404)
    assert answer.json()["error"] == {
        **unknown.json()["error"],
        "message": unknown.json()["error"]["message"].replace(missing, chat_id),
    }
    await socket.close()


async def test_a_resend_returns_the_original_sequence(apps: list[AppProcess]) -> None:
    alice, bob = await asyncio.gather(login(apps[0]), login(apps[0]))
    chat_id = await direct_chat(apps[0], alice, bob)
    socket = await authed(apps[0], alice)
    frame = {"type": "send_message", "chat_id": chat_id, "client_message_id": "once", "text": "é👍"}
    await socket.send(frame)
    first = await socket.recv_until("send_ack")
    await socket.send(frame)
    again = await socket.recv_until("send_ack")
    assert (first["sequence"], first["duplicate"]) == (1, False)
    assert (again["sequence"], again["duplicate"]) == (1, True)
    await socket.send({**frame, "text": "something else"})
    assert (await socket.recv_until("error"))["code"] == "idempotency_key_reused"
    page = (await rest(apps[0], bob, "GET", f"/v1/chats/{chat_id}/messages")).json()
    assert [(m["sequence"], m["text"]) for m in page["messages"]] == [(1, "é👍")]
    await socket.close()


async def test_text_rules_over_the_socket(apps: list[AppProcess]) -> None:
    alice, bob = await asyncio.gather(login(apps[0]), login(apps[0]))
    chat_id = await direct_chat(apps[0], alice, bob)
    socket = await authed(apps[0], alice)
    for text, expected in [("", "invalid_input"), ("x" * 4097, "limit_exceeded")]:
        await socket.send(
            {"type": "send_message", "chat_id": chat_id, "client_message_id": "t", "text": text}
        )
        assert (await socket.recv_until("error"))["code"] == expected
    await socket.send(
        '{"type":"send_message","chat_id":"'
        + chat_id
        + '","client_message_id":"t","text":"\\ud800"}'
    )
    assert (await socket.recv_until("error"))["code"] in {"invalid_input", "invalid_frame"}
    page = (await rest(apps[0], bob, "GET", f"/v1/chats/{chat_id}/messages")).json()
    assert page["messages"] == []
    await socket.close()


async def test_every_answer_to_a_readable_send_names_it_in_ref(apps: list[AppProcess]) -> None:
    """Issue 15: ids over 256 characters got ``invalid_frame`` without ``ref`` (the client could
    not match it to its pending send) while shorter bad ids got ``invalid_input`` with ``ref``.
    Now any bad id gets ``invalid_input`` and any malformed field of a readable ``send_message``
    ``invalid_frame``, both with ``ref``; nothing is stored."""
    alice, bob = await asyncio.gather(login(apps[0]), login(apps[0]))
    chat_id = await direct_chat(apps[0], alice, bob)
    socket = await authed(apps[0], alice)
    cases: list[tuple[dict[str, object], str, dict[str, str]]] = []
    for length in (65, 256, 257, 1000):
        long_id = "m" * length
        cases.append(
            (
                {"chat_id": chat_id, "client_message_id": long_id, "text": "x"},
                "invalid_input",
                {"chat_id": chat_id, "client_message_id": long_id},
            )
        )
        long_chat = "d_" + "0" * length
        cases.append(
            (
                {"chat_id": long_chat, "client_message_id": "ok", "text": "x"},
                "invalid_input",
                {"chat_id": long_chat, "client_message_id": "ok"},
            )
        )
    cases += [
        (
            {"chat_id": chat_id, "client_message_id": "m1", "text": 5},
            "invalid_frame",
            {"chat_id": chat_id, "client_message_id": "m1"},
        ),
        (
            {"chat_id": chat_id, "client_message_id": "m2"},
            "invalid_frame",
            {"chat_id": chat_id, "client_message_id": "m2"},
        ),
    ]
    for fields, code, ref in cases:
        await socket.send({"type": "send_message", **fields})
        answer = await socket.recv_until("error")
        assert (answer["code"], answer.get("ref")) == (code, ref), (fields, answer)
    page = (await rest(apps[0], bob, "GET", f"/v1/chats/{chat_id}/messages")).json()
    assert page["messages"] == []
    await socket.close()


async def test_a_sequence_past_2_to_the_53_is_refused_naming_the_maximum(
    apps: list[AppProcess],
) -> None:
    socket = await authed(apps[0], await login(apps[0]))
    await socket.send({"type": "ack", "chat_id": "d_x", "sequence": 2**53})
    answer = await socket.recv_until("error")
    assert answer["code"] == "invalid_frame"
    assert "9007199254740991" in answer["message"]
    await socket.send(
        {"type": "sync_request", "chats": [{"chat_id": "d_x", "last_acked_sequence": 2**60}]}
    )
    answer = await socket.recv_until("error")
    assert answer["code"] == "invalid_frame"
    assert "9007199254740991" in answer["message"]
    await socket.close()


# ------------------------------------------------------------------ delivery


async def _expect_message(socket, chat_id: str, sequence: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    frame = await socket.recv_until("message", seconds=15)
    assert (frame["chat_id"], frame["sequence"]) == (chat_id, sequence), frame
    return frame


async def test_every_device_of_every_member_receives_across_processes(
    apps: list[AppProcess],
) -> None:
    alice = await login(apps[0])
    alice_phone_2 = await login(apps[1], phone=alice.phone)  # a second device of alice
    bob = await login(apps[1])
    bob_2 = await login(apps[0], phone=bob.phone)  # bob's second device
    chat_id = await direct_chat(apps[0], alice, bob)
    sockets = {
        "alice@1": await authed(apps[0], alice),
        "alice@2": await authed(apps[1], alice_phone_2),
        "bob@2": await authed(apps[1], bob),
        "bob@1": await authed(apps[0], bob_2),
    }
    sender = sockets["bob@2"]
    await sender.send(
        {"type": "send_message", "chat_id": chat_id, "client_message_id": "x1", "text": "hey"}
    )
    ack = await sender.recv_until("send_ack")
    for name, socket in sockets.items():
        frame = await _expect_message(socket, chat_id, ack["sequence"])
        assert frame["text"] == "hey", name
        assert frame["sender_device"] == bob.device_id
    for socket in sockets.values():
        await socket.close()


async def test_group_members_on_two_processes_see_one_order(apps: list[AppProcess]) -> None:
    members = list(await asyncio.gather(*(login(apps[i % 2]) for i in range(4))))
    chat_id = await group_chat(apps[0], members[0], members[1:])
    sockets = [await authed(apps[i % 2], m) for i, m in enumerate(members)]

    async def send(i: int) -> None:
        for n in range(5):
            await sockets[i].send(
                {
                    "type": "send_message",
                    "chat_id": chat_id,
                    "client_message_id": f"u{i}-{n}",
                    "text": f"{i}:{n}",
                }
            )

    await asyncio.gather(*(send(i) for i in range(4)))

    async def view(socket) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
        seen: dict[int, str] = {}
        async with asyncio.timeout(20):
            while len(seen) < 20:
                frame = await socket.recv()
                if frame["type"] == "message":
                    seen[frame["sequence"]] = frame["text"]
        return sorted(seen.items())

    views = await asyncio.gather(*(view(s) for s in sockets))
    assert [seq for seq, _ in views[0]] == list(range(1, 21))
    assert all(v == views[0] for v in views)
    for socket in sockets:
        await socket.close()


async def test_a_removed_member_gets_no_later_messages(apps: list[AppProcess]) -> None:
    owner, stays, leaves = await asyncio.gather(login(apps[0]), login(apps[1]), login(apps[1]))
    chat_id = await group_chat(apps[0], owner, [stays, leaves])
    sockets = {name: await authed(apps[1], a) for name, a in (("stays", stays), ("leaves", leaves))}
    sender = await authed(apps[0], owner)
    await sender.send(
        {"type": "send_message", "chat_id": chat_id, "client_message_id": "a", "text": "1"}
    )
    for socket in sockets.values():
        await _expect_message(socket, chat_id, 1)
    removed = await rest(apps[0], owner, "DELETE", f"/v1/chats/{chat_id}/members/{leaves.user_id}")
    assert removed.json() == {"removed_after_sequence": 1}
    await sender.send(
        {"type": "send_message", "chat_id": chat_id, "client_message_id": "b", "text": "2"}
    )
    await _expect_message(sockets["stays"], chat_id, 2)
    with pytest.raises(TimeoutError):
        await sockets["leaves"].recv_until("message", seconds=1.5)
    history = (await rest(apps[1], leaves, "GET", f"/v1/chats/{chat_id}/messages")).json()
    assert [m["sequence"] for m in history["messages"]] == [1]
    await sockets["leaves"].send(
        {"type": "send_message", "chat_id": chat_id, "client_message_id": "c", "text": "3"}
    )
    assert (await sockets["leaves"].recv_until("error"))["code"] == "not_a_member"
    for socket in [*sockets.values(), sender]:
        await socket.close()


async def test_ack_moves_forward_only_and_lists_unread(apps: list[AppProcess]) -> None:
    alice, bob = await asyncio.gather(login(apps[0]), login(apps[1]))
    chat_id = await direct_chat(apps[0], alice, bob)
    a = await authed(apps[0], alice)
    for n in range(3):
        await a.send(
            {"type": "send_message", "chat_id": chat_id, "client_message_id": f"n{n}", "text": "x"}
        )
        await a.recv_until("send_ack")
    b = await authed(apps[1], bob)
    await b.send({"type": "ack", "chat_id": chat_id, "sequence": 2})
    assert (await b.recv_until("acked"))["last_acked_sequence"] == 2
    await b.send({"type": "ack", "chat_id": chat_id, "sequence": 1})
    assert (await b.recv_until("acked"))["last_acked_sequence"] == 2
    await b.send({"type": "ack", "chat_id": chat_id, "sequence": 9})
    assert (await b.recv_until("error"))["code"] == "invalid_input"
    chats = (await rest(apps[1], bob, "GET", "/v1/chats")).json()["chats"]
    mine = next(c for c in chats if c["chat_id"] == chat_id)
    assert (mine["head"], mine["last_acked_sequence"], mine["unread"]) == (3, 2, 1)
    for socket in (a, b):
        await socket.close()


async def dynamodb_calls(app: AppProcess, operation: str) -> float:
    async with httpx.AsyncClient(base_url=app.base_url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    pattern = rf'^messaging_dynamodb_call_seconds_count{{operation="{operation}"}} (\S+)$'
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_an_ack_of_what_the_connection_was_sent_skips_the_visibility_reads(
    apps: list[AppProcess],
) -> None:
    """ADR 0015: an ack up to what this connection was pushed is one conditional write; an ack
    of something it was not sent is checked against the chat and the membership first."""
    alice, bob = await asyncio.gather(login(apps[0]), login(apps[0]))
    chat_id = await direct_chat(apps[0], alice, bob)
    a, b = await authed(apps[0], alice), await authed(apps[0], bob)
    for n in range(2):
        await a.send(
            {"type": "send_message", "chat_id": chat_id, "client_message_id": f"k{n}", "text": "x"}
        )
        await a.recv_until("send_ack")
        assert (await b.recv_until("message"))["sequence"] == n + 1
    reads = await dynamodb_calls(apps[0], "GetItem")
    writes = await dynamodb_calls(apps[0], "UpdateItem")
    await b.send({"type": "ack", "chat_id": chat_id, "sequence": 2})
    assert (await b.recv_until("acked"))["last_acked_sequence"] == 2
    assert await dynamodb_calls(apps[0], "GetItem") == reads
    assert await dynamodb_calls(apps[0], "UpdateItem") == writes + 1
    # Another connection of bob's was sent nothing: its acks are checked first.
    other = await authed(apps[0], bob)
    reads = await dynamodb_calls(apps[0], "GetItem")
    await other.send({"type": "ack", "chat_id": chat_id, "sequence": 1})
    assert (await other.recv_until("acked"))["last_acked_sequence"] == 2
    assert await dynamodb_calls(apps[0], "GetItem") >= reads + 2  # the chat, the membership
    await other.send({"type": "ack", "chat_id": chat_id, "sequence": 3})
    assert (await other.recv_until("error"))["code"] == "invalid_input"
    for socket in (a, b, other):
        await socket.close()


@pytest.mark.parametrize("extra_app", [{"MESSAGING_WS_IDLE_TIMEOUT_SECONDS": "1"}], indirect=True)
async def test_a_silent_client_is_closed_4010_and_a_pinging_one_is_not(
    extra_app: AppProcess,
) -> None:
    silent, pinging = await asyncio.gather(login(extra_app), login(extra_app))
    quiet = await authed(extra_app, silent)
    alive = await authed(extra_app, pinging)

    async def keep_pinging() -> None:
        for n in range(12):
            await alive.send({"type": "ping", "id": str(n)})
            await asyncio.sleep(0.25)

    pings = asyncio.create_task(keep_pinging())
    assert await quiet.closed_with(seconds=10) == 4010
    await pings
    await alive.send({"type": "ping", "id": "last"})
    assert (await alive.recv_until("pong"))["id"] in {str(n) for n in range(12)} | {"last"}
