"""Live WebSocket fuzzing: Hypothesis-generated frames on an authenticated socket of a real app.

The user (alice) is in a 1:1 chat with bob (``chat_in``), was removed from bob's group after its
second message (``chat_removed``), and is not in bob's chat with carol (``chat_out``). Each example
opens a socket, sends a few frames (garbage text, near-valid frames of every client type with
fields missing, of the wrong type, huge or unicode, unknown types, oversize text, binary frames,
and valid sends, acks, syncs and pings among them) and checks, frame by frame:

- every frame the server must refuse gets an ``error`` frame with the code the protocol
  documents for it (docs/protocol.md), and the connection survives it;
- every valid frame gets its answer (``send_ack``/``acked``/``sync_complete``/``pong``) or an
  ``error`` with a documented code that names what it answers (``ref``);
- the server never drops the connection without a close code, and closes only with a
  documented code for a documented reason (1009 for a frame over 1 MiB; the socket is then
  reopened and the example goes on);
- nothing of a chat alice may not see reaches her (replays stop at her removal point);
- then: the process is healthy (``/healthz``), and the stored state, read over REST, is what the
  accepted frames made it: each chat's history, alice's chats and ack position, the group's
  members. A refused frame changes nothing.

Separate tests flood the socket with more than 20 invalid frames (close 4000, and a new socket
works at once) and send text frames that are not UTF-8 (the transport closes with 1007).

Each test is brief by default (a fixed set of examples, a few seconds);
``MESSAGING_TEST_FUZZ_EXAMPLES=N`` runs N random examples per test instead.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from messaging.protocol import frames
from messaging.protocol.frames import FrameError
from tests.harness import AppProcess
from tests.integration.raw import Account
from tests.integration.sync_client import (
    SyncSocket,
    authed,
    documented_close_codes,
    documented_error_codes,
    fuzz_derandomize,
    fuzz_examples,
    healthy,
    login,
    send_and_ack,
    session,
    weighted,
)

TRANSPORT_LIMIT = 1 << 20  # frames over 1 MiB: close 1009
READER_CODES = {"invalid_frame", "unknown_type", "frame_too_large", "binary_not_supported"}
ERRORS = documented_error_codes()
CLOSES = documented_close_codes()
FRESH = itertools.count(int(time.time() * 1000))
SEEN: Counter[str] = Counter()
"""What the fuzzer reached (a test that reached no valid send proves little)."""


def event(name: str) -> None:
    SEEN[name] += 1
    hypothesis_event(name)


def fuzz_settings(default_examples: int) -> settings:
    return settings(
        max_examples=fuzz_examples(default_examples),
        deadline=None,
        database=None,
        derandomize=fuzz_derandomize(),
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


# ------------------------------------------------------------------ the world and its model


@attrs.define
class World:
    """The chats and what their stored state must be (the model the fuzzer keeps)."""

    app: AppProcess
    alice: Account
    bob: Account
    carol: Account
    chat_in: str
    chat_removed: str
    chat_out: str
    removal_point: int
    history: dict[str, list[tuple[int, str, str]]]  # chat -> (sequence, cmid, text)
    acked_in: int = 0
    alice_cmids: dict[str, tuple[str, int, str]] = attrs.Factory(dict)  # cmid -> chat, seq, text

    def rest(self, account: Account, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {account.token}"}
        return httpx.request(
            method, self.app.base_url + path, headers=headers, timeout=10, **kwargs
        )

    def read_history(self, account: Account, chat_id: str) -> list[tuple[int, str, str]]:
        found: list[tuple[int, str, str]] = []
        after = 0
        while True:
            answer = self.rest(
                account, "GET", f"/v1/chats/{chat_id}/messages", params={"after": after}
            )
            assert answer.status_code == 200, answer.text
            page = answer.json()
            found += [(m["sequence"], m["client_message_id"], m["text"]) for m in page["messages"]]
            if not page["has_more"]:
                return found
            after = found[-1][0]

    def verify(self) -> None:
        """The stored state is the model's."""
        assert self.read_history(self.alice, self.chat_in) == self.history[self.chat_in]
        assert self.read_history(self.bob, self.chat_removed) == self.history[self.chat_removed]
        assert self.read_history(self.carol, self.chat_out) == self.history[self.chat_out]
        chats = self.rest(self.alice, "GET", "/v1/chats").json()["chats"]
        assert [c["chat_id"] for c in chats] == [self.chat_in]
        assert chats[0]["head"] == len(self.history[self.chat_in])
        assert chats[0]["last_acked_sequence"] == self.acked_in
        members = self.rest(self.bob, "GET", f"/v1/chats/{self.chat_removed}/members").json()
        assert members == {"members": sorted([self.bob.user_id, self.carol.user_id])}

    def visible_head(self, chat_id: str) -> int | None:
        if chat_id == self.chat_in:
            return len(self.history[chat_id])
        if chat_id == self.chat_removed:
            return self.removal_point
        return None


@pytest.fixture(scope="module")
def world(apps: list[AppProcess]) -> World:
    app = apps[0]
    alice, bob, carol = login(app), login(app), login(app)

    def post(account: Account, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = httpx.post(
            app.base_url + path,
            json=body,
            headers={"authorization": f"Bearer {account.token}"},
            timeout=10,
        )
        assert answer.status_code in (200, 201), answer.text
        return dict(answer.json())

    chat_in = post(alice, "/v1/chats/direct", {"user_id": bob.user_id})["chat"]["chat_id"]
    chat_out = post(bob, "/v1/chats/direct", {"user_id": carol.user_id})["chat"]["chat_id"]
    group = post(
        bob,
        "/v1/chats/groups",
        {"title": "fuzz group", "member_ids": [alice.user_id, carol.user_id]},
    )["chat"]["chat_id"]
    history: dict[str, list[tuple[int, str, str]]] = {chat_in: [], chat_out: [], group: []}
    with session(app, bob) as socket:
        for chat_id, cmid, text in [
            (chat_in, "b-in-1", "hi alice"),
            (chat_out, "b-out-1", "secret for carol"),
            (group, "b-g-1", "group one"),
            (group, "b-g-2", "group two"),
        ]:
            history[chat_id].append((send_and_ack(socket, chat_id, cmid, text), cmid, text))
        answer = httpx.delete(
            f"{app.base_url}/v1/chats/{group}/members/{alice.user_id}",
            headers={"authorization": f"Bearer {bob.token}"},
            timeout=10,
        )
        assert answer.json() == {"removed_after_sequence": 2}, answer.text
        sequence = send_and_ack(socket, group, "b-g-3", "after alice left")
        history[group].append((sequence, "b-g-3", "after alice left"))
    made = World(app, alice, bob, carol, chat_in, group, chat_out, 2, history)
    made.verify()
    return made


# ------------------------------------------------------------------ frames


def encode(value: object) -> str:
    """JSON text; the stdlib writes what orjson will not (lone surrogates as escapes, NaN,
    integers over 64 bits), which the server must refuse."""
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([-1, 2**53, 2**64, -(2**63), 10**40]),
    st.floats(),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def _mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> Any:
    return weighted((4, common), (1, rare))


def frame_strategy(world: World) -> st.SearchStrategy[str | bytes]:
    chat_pool = [world.chat_in] * 3 + [world.chat_removed, world.chat_out, "g_" + "0" * 32]
    chat_ids = _mostly(st.sampled_from(chat_pool), st.text(max_size=40))
    cmids = weighted(
        (2, st.sampled_from(["fz-1", "fz-2", "b-in-1"])),  # reused: duplicates, or key reuse
        (4, st.builds(lambda: f"fz-{next(FRESH)}")),  # fresh: stored
        (1, st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True)),
        (1, st.text(max_size=70)),  # mostly invalid ids
    )
    texts = _mostly(
        st.text(min_size=1, max_size=30),
        st.sampled_from(["", "x" * 4097, "é👍" * 1000, "\x00", " "]),
    )
    sequences = _mostly(
        st.sampled_from([0, 1, 2, 3, 4, 6, 9, 30]), st.sampled_from([-1, 2**53 - 1, 2**53])
    )
    fields = {
        "send_message": {"chat_id": chat_ids, "client_message_id": cmids, "text": texts},
        "ack": {"chat_id": chat_ids, "sequence": sequences},
        "sync_request": {
            "chats": st.none()
            | st.lists(
                st.fixed_dictionaries({"chat_id": chat_ids, "last_acked_sequence": sequences}),
                max_size=3,
            )
        },
        "ping": {"id": st.none() | st.text(max_size=70)},
        "auth": {
            "token": st.sampled_from([world.alice.token, world.bob.token, "garbage"]),
            "device_id": st.sampled_from([world.alice.device_id, "x" * 8]),
        },
    }
    kinds = st.sampled_from(["send_message"] * 3 + ["ack", "sync_request", "ping", "auth"])

    @st.composite
    def client_frame(draw: st.DrawFn, mutate: bool) -> str:
        """A frame of a client type: as the protocol says, or (``mutate``) with fields
        missing, of the wrong type, and extra fields."""
        kind = draw(kinds)
        frame: dict[str, Any] = {"type": kind}
        for name, values in fields[kind].items():
            choice = draw(st.sampled_from(["valid", "wrong", "missing"])) if mutate else "valid"
            if choice == "valid":
                frame[name] = draw(values)
            elif choice == "wrong":
                frame[name] = draw(json_values)
        if mutate:
            frame.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)))
        return encode(frame)

    junk = st.one_of(
        st.text(max_size=60),  # garbage, and sometimes JSON by chance
        st.binary(max_size=40),
        json_values.map(encode),
        st.builds(lambda t: encode({"type": t}), st.text(max_size=30)),  # unknown types
        st.builds(
            lambda n: encode({"type": "ping", "id": "y" * n}),
            st.sampled_from([16_300, 20_000, 40_000, TRANSPORT_LIMIT + 10]),
        ),  # over max_frame_bytes: frame_too_large; over 1 MiB: close 1009
    )
    return weighted((5, client_frame(mutate=False)), (3, client_frame(mutate=True)), (2, junk))


# ------------------------------------------------------------------ expectations


@attrs.frozen
class Refused:
    code: str
    ref: dict[str, Any] | None = None
    """The ``ref`` the error carries (a readable ``send_message``'s, ADR 0021), or none."""


@attrs.frozen
class TooBig:
    pass


def classify(raw: str | bytes, max_frame_bytes: int) -> Refused | TooBig | frames.ClientFrame:
    """What the protocol says the server does with ``raw`` on an authenticated socket."""
    if isinstance(raw, bytes):
        return Refused("binary_not_supported")
    size = len(raw.encode())
    if size > TRANSPORT_LIMIT:
        return TooBig()
    if size > max_frame_bytes:
        return Refused("frame_too_large")
    try:
        frame = frames.decode_client_frame(raw)  # the gateway's decoder (ADR 0021)
    except FrameError as exc:
        return Refused(exc.code, None if exc.ref is None else msgspec.to_builtins(exc.ref))
    if isinstance(frame, frames.Auth):
        return Refused("invalid_frame")  # already authenticated
    return frame


class Conversation:
    """One socket of alice's: sends a frame, reads and checks its answers, updates the model."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.socket = authed(world.app, world.alice)
        self.limit = int(self.socket.ready["limits"]["max_frame_bytes"])

    def close(self) -> None:
        self.socket.close()

    def next_answer(self, want: Callable[[dict[str, Any]], bool], about: object) -> dict[str, Any]:
        """The next frame that is not a ``message``; ``message`` frames are checked on the way."""
        while True:
            frame = self.socket.recv(seconds=8)
            if frame["type"] == "message":
                self.check_message(frame)
                continue
            assert want(frame), (about, frame)
            if frame["type"] == "error":
                assert frame["code"] in ERRORS, frame
                assert isinstance(frame["message"], str)
                assert isinstance(frame["retriable"], bool)
            return frame

    def check_message(self, frame: dict[str, Any]) -> None:
        head = self.world.visible_head(frame["chat_id"])
        assert head is not None, f"a message of a chat alice is not in reached her: {frame}"
        if frame["chat_id"] == self.world.chat_removed:
            assert frame.get("replay") is True
            assert frame["sequence"] <= self.world.removal_point, frame

    def exchange(self, raw: str | bytes) -> None:
        expected = classify(raw, self.limit)
        event(f"frame: {type(expected).__name__}")
        try:
            self.socket.send(raw)
            self.answer(expected, raw)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            assert code is not None, f"dropped without a close code after {str(raw)[:200]!r}"
            assert code in CLOSES, code
            assert (code, expected) == (1009, TooBig()), f"closed {code} after {str(raw)[:200]!r}"
            self.socket = authed(self.world.app, self.world.alice)
            return
        assert not isinstance(expected, TooBig), "a frame over 1 MiB did not close the socket"

    def answer(self, expected: Refused | TooBig | frames.ClientFrame, raw: str | bytes) -> None:
        world = self.world
        match expected:
            case TooBig():
                self.socket.recv(seconds=8)  # the close
            case Refused(code=code, ref=ref):
                error = self.next_answer(lambda f: f["type"] == "error", raw)
                assert error["code"] == code, (raw, error)
                assert error.get("ref") == ref, (raw, error)
            case frames.Ping(id=ping_id):
                pong = self.next_answer(lambda f: f["type"] == "pong", raw)
                assert pong["id"] == ping_id
            case frames.SendMessage():
                self.answer_send(expected)
            case frames.Ack(chat_id=chat_id, sequence=sequence):
                self.answer_ack(chat_id, sequence)
            case frames.SyncRequest(chats=chats):
                positions = (
                    [(world.chat_in, world.acked_in)]  # from her stored ack
                    if chats is None
                    else [(p.chat_id, p.last_acked_sequence) for p in chats]
                )
                for chat_id, after in positions:
                    self.answer_sync(chat_id, after)
            case _:
                pytest.fail(f"unexpected expectation {expected!r}")

    def answer_send(self, send: frames.SendMessage) -> None:
        world = self.world
        answer = self.next_answer(lambda f: f["type"] in ("send_ack", "error"), send)
        event(f"send: {answer.get('code', 'duplicate' if answer.get('duplicate') else 'stored')}")
        if answer["type"] == "error":
            assert answer["ref"]["chat_id"] == send.chat_id, answer
            assert answer["ref"]["client_message_id"] == send.client_message_id, answer
            return
        assert (answer["chat_id"], answer["client_message_id"]) == (
            send.chat_id,
            send.client_message_id,
        )
        assert send.chat_id == world.chat_in, f"alice stored a message in {send.chat_id}"
        history = world.history[world.chat_in]
        if answer["duplicate"]:
            stored = world.alice_cmids[send.client_message_id]
            assert stored == (send.chat_id, answer["sequence"], send.text), (stored, answer)
        else:
            assert send.client_message_id not in world.alice_cmids, answer
            assert answer["sequence"] == len(history) + 1, answer
            history.append((answer["sequence"], send.client_message_id, send.text))
            world.alice_cmids[send.client_message_id] = (
                send.chat_id,
                answer["sequence"],
                send.text,
            )

    def answer_ack(self, chat_id: str, sequence: int) -> None:
        world = self.world
        answer = self.next_answer(lambda f: f["type"] in ("acked", "error"), (chat_id, sequence))
        event(f"ack: {answer.get('code', answer['type'])}")
        head = world.visible_head(chat_id)
        if head is None:  # not hers, no such chat, or not a chat id
            assert answer["type"] == "error", answer
            assert answer["ref"] == {"chat_id": chat_id}, answer
        elif sequence > head:  # never past the head (for her: her removal point)
            assert (answer["type"], answer["code"]) == ("error", "invalid_input"), answer
            assert answer["ref"] == {"chat_id": chat_id}, answer
            named = re.findall(r"head (\d+)", answer["message"])
            assert named in ([], [str(head)]), answer
        else:
            assert answer["type"] == "acked", answer
            assert answer["chat_id"] == chat_id
            if chat_id == world.chat_in:
                world.acked_in = max(world.acked_in, sequence)
                assert answer["last_acked_sequence"] == world.acked_in
            else:
                assert sequence <= answer["last_acked_sequence"] <= world.removal_point

    def answer_sync(self, chat_id: str, after: int) -> None:
        head = self.world.visible_head(chat_id)
        replayed: list[int] = []
        while True:
            frame = self.socket.recv(seconds=8)
            if frame["type"] == "message":
                self.check_message(frame)
                if frame.get("replay") and frame["chat_id"] == chat_id:
                    replayed.append(frame["sequence"])
                continue
            assert frame["type"] in ("sync_complete", "error"), (chat_id, frame)
            break
        if frame["type"] == "error":
            assert frame["code"] in ERRORS, frame
            assert frame["ref"]["chat_id"] == chat_id, frame
            assert head is None, f"alice may read {chat_id} but her sync was refused: {frame}"
            assert not replayed
            return
        assert head is not None, f"a sync of {chat_id}, which alice may not read: {frame}"
        assert frame == {"type": "sync_complete", "chat_id": chat_id, "head": head}
        assert replayed == list(range(after + 1, head + 1))


# ------------------------------------------------------------------ tests


def test_fuzzed_frames_are_answered_and_change_only_what_valid_frames_change(
    apps: list[AppProcess], world: World
) -> None:
    app = apps[0]

    @fuzz_settings(40)
    @given(batch=st.lists(frame_strategy(world), min_size=1, max_size=8))
    def run(batch: list[str | bytes]) -> None:
        talk = Conversation(world)
        try:
            for raw in batch:
                talk.exchange(raw)
        finally:
            talk.close()
        assert healthy(app)
        world.verify()

    SEEN.clear()
    run()
    # The fuzzer reached both sides: refusals, and valid sends that were stored.
    assert SEEN["frame: Refused"] > 0, SEEN
    assert SEEN["send: stored"] > 0, SEEN


def invalid_frames(world: World) -> st.SearchStrategy[str | bytes]:
    return frame_strategy(world).filter(
        lambda raw: (
            isinstance(classify(raw, 16 * 1024), Refused) and len(raw) < TRANSPORT_LIMIT // 4
        )
    )


def test_a_flood_of_invalid_frames_closes_4000_and_changes_nothing(
    apps: list[AppProcess], world: World
) -> None:
    app = apps[0]

    @fuzz_settings(3)
    @given(batch=st.lists(invalid_frames(world), min_size=21, max_size=30))
    def run(batch: list[str | bytes]) -> None:
        socket: SyncSocket = authed(app, world.alice)
        started = time.monotonic()
        answers: list[dict[str, Any]] = []
        code: int | None = None
        try:
            for raw in batch:
                socket.send(raw)
            while True:
                answers.append(socket.recv(seconds=8))
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
        assert time.monotonic() - started < 10  # all within the server's 10 s window
        assert code == 4000
        assert len(answers) <= 21
        for answer in answers:
            assert answer["type"] == "error", answer
            assert answer["code"] in READER_CODES & ERRORS, answer
        with session(app, world.alice) as again:
            again.send({"type": "ping", "id": "after-flood"})
            assert again.recv()["id"] == "after-flood"
        assert healthy(app)
        world.verify()

    run()


def test_a_text_frame_that_is_not_utf8_closes_1007_and_the_app_goes_on(
    apps: list[AppProcess], world: World
) -> None:
    # RFC 6455 8.1: a text frame that is not UTF-8 fails the connection with 1007; the
    # transport does it before the gateway sees the frame (docs/protocol.md's table of close
    # codes does not list 1007).
    app = apps[0]
    for payload in (b'{"type":"ping","id":"\xff"}', b"\xed\xa0\x80", b"\xc3"):
        socket = authed(app, world.alice)
        socket.ws.send(payload, text=True)
        assert socket.closed_with() == 1007
        socket.close()
    with session(app, world.alice) as again:
        again.send({"type": "ping", "id": "after-1007"})
        assert again.recv()["id"] == "after-1007"
    assert healthy(app)
    world.verify()
