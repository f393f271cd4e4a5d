"""The typed protocol v1 (``messaging.protocol.frames``, ADR 0021): the wire format is byte for
byte the one of the dict-built frames before it, answers to malformed frames carry what the
client needs to match them, and the hand-off envelope is versioned."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messaging.client import connection as client_connection
from messaging.domain.model import Message
from messaging.protocol import frames
from messaging.protocol.delivery import Delivery
from messaging.protocol.frames import ErrorCode, FrameError
from messaging.protocol.handoff import HandoffError, decode_handoff, encode_handoff

MESSAGE = Message(
    chat_id="d_0123",
    sequence=42,
    sender_id="u_1",
    sender_device="web-3f2a9c1e",
    client_message_id="web-3f2a9c1e-17",
    text='hi 👋 "quoted" \u2028',
    created_at_ms=1764240000123,
)
MESSAGE_JSON = {
    "chat_id": "d_0123",
    "sequence": 42,
    "sender_id": "u_1",
    "sender_device": "web-3f2a9c1e",
    "client_message_id": "web-3f2a9c1e-17",
    "text": 'hi 👋 "quoted" \u2028',
    "created_at_ms": 1764240000123,
}


@pytest.mark.parametrize(
    ("frame", "before"),
    [
        (frames.message(MESSAGE), {"type": "message", **MESSAGE_JSON}),
        (frames.message(MESSAGE, replay=True), {"type": "message", **MESSAGE_JSON, "replay": True}),
        (
            frames.send_ack(MESSAGE, duplicate=True),
            {
                "type": "send_ack",
                "chat_id": "d_0123",
                "client_message_id": "web-3f2a9c1e-17",
                "sequence": 42,
                "duplicate": True,
                "created_at_ms": 1764240000123,
            },
        ),
        (
            frames.acked("d_0123", 7),
            {"type": "acked", "chat_id": "d_0123", "last_acked_sequence": 7},
        ),
        (
            frames.sync_complete("d_0123", 9),
            {"type": "sync_complete", "chat_id": "d_0123", "head": 9},
        ),
        (frames.pong(None, 5), {"type": "pong", "id": None, "server_time_ms": 5}),
        (frames.resync("routing_lost"), {"type": "resync", "reason": "routing_lost"}),
        (
            frames.error(ErrorCode.NOT_FOUND, "no", ref=frames.send_ref("d_0123", "m1")),
            {
                "type": "error",
                "code": "not_found",
                "message": "no",
                "retriable": False,
                "ref": {"chat_id": "d_0123", "client_message_id": "m1"},
            },
        ),
        (
            frames.error(
                ErrorCode.RATE_LIMITED,
                "slow down",
                ref=frames.sync_ref(
                    frames.SyncRequest(
                        chats=(frames.SyncPosition(chat_id="a", last_acked_sequence=1),)
                    )
                ),
                retry_after_ms=250,
            ),
            {
                "type": "error",
                "code": "rate_limited",
                "message": "slow down",
                "retriable": True,
                "ref": {"sync": True, "chat_ids": ["a"]},
                "retry_after_ms": 250,
            },
        ),
        (
            frames.error(ErrorCode.UNAVAILABLE, "later", ref=frames.sync_chat_ref("a")),
            {
                "type": "error",
                "code": "unavailable",
                "message": "later",
                "retriable": True,
                "ref": {"sync": True, "chat_id": "a"},
            },
        ),
        (
            frames.error(ErrorCode.INVALID_FRAME, "bad"),
            {"type": "error", "code": "invalid_frame", "message": "bad", "retriable": False},
        ),
        (
            frames.ready(
                user_id="u_1",
                device_id="d",
                connection_id="c_1",
                server_time_ms=1,
                limits=frames.Limits(
                    max_frame_bytes=16384,
                    outbound_queue_messages=1000,
                    outbound_queue_bytes=1048576,
                    sync_page_size=200,
                    idle_timeout_ms=60000,
                ),
            ),
            {
                "type": "ready",
                "protocol": 1,
                "user_id": "u_1",
                "device_id": "d",
                "connection_id": "c_1",
                "server_time_ms": 1,
                "limits": {
                    "max_frame_bytes": 16384,
                    "outbound_queue_messages": 1000,
                    "outbound_queue_bytes": 1048576,
                    "sync_page_size": 200,
                    "idle_timeout_ms": 60000,
                },
            },
        ),
    ],
)
def test_server_frames_are_byte_for_byte_the_dict_built_ones(
    frame: frames.ServerFrame, before: dict[str, object]
) -> None:
    assert frames.encode(frame) == orjson.dumps(before)
    assert frames.decode_server_frame(frames.encode(frame)) == frame


def test_a_send_message_with_long_ids_reaches_the_service() -> None:
    """Issue 15: over 256 characters the parser refused it without ``ref`` (``invalid_frame``)
    while the service answered shorter bad ids with ``invalid_input`` and ``ref``; now every
    id goes to the service, whose answer the client can match."""
    raw = orjson.dumps(
        {"type": "send_message", "chat_id": "c" * 300, "client_message_id": "m" * 300, "text": "x"}
    )
    frame = frames.decode_client_frame(raw)
    assert frame == frames.SendMessage(chat_id="c" * 300, client_message_id="m" * 300, text="x")


@pytest.mark.parametrize(
    ("fields", "ref"),
    [
        ({"chat_id": "c", "client_message_id": "m", "text": 5}, frames.send_ref("c", "m")),
        (
            {"chat_id": 5, "client_message_id": "m", "text": "x"},
            frames.ErrorRef(client_message_id="m"),
        ),
        ({"chat_id": "c", "text": "x"}, frames.ErrorRef(chat_id="c")),
        ({"client_message_id": ["m"], "text": "x"}, None),
    ],
)
def test_a_readable_send_message_with_a_bad_field_is_refused_with_ref(
    fields: dict[str, object], ref: frames.ErrorRef | None
) -> None:
    raw = orjson.dumps({"type": "send_message", **fields})
    for decode in (
        frames.decode_client_frame,
        lambda r: frames.parse_client_frame(orjson.loads(r)),
    ):
        with pytest.raises(FrameError) as refused:
            decode(raw)
        assert refused.value.code is ErrorCode.INVALID_FRAME
        assert refused.value.ref == ref


@pytest.mark.parametrize("field", ["sequence", "last_acked_sequence"])
def test_a_sequence_over_2_to_the_53_is_refused_naming_the_maximum(field: str) -> None:
    """Issue 15: it was refused as "must be a non-negative integer", which it is."""
    if field == "sequence":
        frame: dict[str, object] = {"type": "ack", "chat_id": "c", "sequence": 2**53}
    else:
        frame = {"type": "sync_request", "chats": [{"chat_id": "c", field: 2**53}]}
    with pytest.raises(FrameError) as refused:
        frames.decode_client_frame(orjson.dumps(frame))
    assert refused.value.code is ErrorCode.INVALID_FRAME
    assert str(frames.MAX_SEQUENCE) in refused.value.message
    assert field in refused.value.message
    ok = {"type": "ack", "chat_id": "c", "sequence": frames.MAX_SEQUENCE}
    assert frames.decode_client_frame(orjson.dumps(ok)) == frames.Ack(
        chat_id="c", sequence=frames.MAX_SEQUENCE
    )


def test_retriable_codes_are_said_in_one_place() -> None:
    assert {code for code in ErrorCode if code.retriable} == {
        ErrorCode.RATE_LIMITED,
        ErrorCode.UNAVAILABLE,
        ErrorCode.STORE_UNAVAILABLE,
        ErrorCode.INTERNAL_ERROR,
    }
    assert not hasattr(client_connection, "RETRIABLE_ERRORS")
    assert frames.error(ErrorCode.STORE_UNAVAILABLE, "x").retriable


def test_the_handoff_envelope_is_versioned_and_reads_the_version_before() -> None:
    deliveries = [Delivery(MESSAGE, ("u_1", "u_2")), Delivery(MESSAGE, ())]
    payload = encode_handoff(deliveries)
    assert orjson.loads(payload)["v"] == 1
    assert decode_handoff(payload) == deliveries
    legacy = orjson.dumps([{"m": MESSAGE_JSON, "r": ["u_1", "u_2"]}])
    assert decode_handoff(legacy) == deliveries[:1]
    for bad in (b"{", b'{"v": 2, "deliveries": []}', b'[{"m": {}, "r": []}]', b"7"):
        with pytest.raises(HandoffError):
            decode_handoff(bad)


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"zz","x":"\\ud800"}',
        '{"type":"ack","sequence":-1,"chat_id":"\\ud800"}',
        '{"type":"ping","id":5,',
        '{"type":5,',
    ],
)
def test_text_that_fails_validation_before_it_fails_as_json_is_not_a_frame(raw: str) -> None:
    """Found by test_fuzz_ws: the typed decoder may refuse a field before it reaches the text's
    broken JSON; the answer is ``invalid_frame``, never an exception that ends the reader."""
    with pytest.raises(FrameError) as refused:
        frames.decode_client_frame(raw)
    assert refused.value.code is ErrorCode.INVALID_FRAME
    assert refused.value.ref is None


_frame_dicts = st.fixed_dictionaries(
    {"type": st.sampled_from(["auth", "send_message", "ack", "sync_request", "ping", "zz", 5])},
    optional={
        "chat_id": st.one_of(st.text(max_size=5), st.integers(), st.none()),
        "client_message_id": st.one_of(st.text(max_size=5), st.integers()),
        "text": st.one_of(st.text(max_size=5), st.integers()),
        "sequence": st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans()),
        "id": st.one_of(st.text(max_size=70), st.integers()),
        "chats": st.one_of(
            st.none(), st.lists(st.dictionaries(st.text(max_size=3), st.integers()))
        ),
    },
)


@st.composite
def near_json_texts(draw: st.DrawFn) -> str:
    """The JSON of a near-valid frame, maybe cut short or with a lone surrogate escape."""
    text = json.dumps(draw(_frame_dicts))
    cut = draw(st.integers(0, len(text)))
    match draw(st.sampled_from(["keep", "cut", "surrogate"])):
        case "cut":
            return text[:cut]
        case "surrogate":
            return text[:cut] + '"\\ud800"' + text[cut:]
        case _:
            return text


def outcome(decode: Callable[[Any], frames.ClientFrame], value: object) -> object:
    """The frame, or the FrameError's (code, ref)."""
    try:
        return decode(value)
    except FrameError as exc:
        return (exc.code, exc.ref)


@settings(max_examples=500, deadline=None, database=None, derandomize=True)
@given(raw=near_json_texts())
def test_any_text_is_a_client_frame_or_a_frame_error(raw: str) -> None:
    """Whatever the text, the gateway's decoder answers a frame or a FrameError (anything else
    would end the connection's reader), and agrees with the decoder of parsed values."""
    got = outcome(frames.decode_client_frame, raw)
    if isinstance(got, tuple):
        assert got[0] in (ErrorCode.INVALID_FRAME, ErrorCode.UNKNOWN_TYPE)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        assert got == (ErrorCode.INVALID_FRAME, None)
        return
    assert outcome(frames.parse_client_frame, value) == got
