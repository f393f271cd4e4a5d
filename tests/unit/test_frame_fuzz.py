"""Fuzzing the input decoders, no I/O: the WebSocket frame parser and the REST request readers.

``parse_client_frame`` gets arbitrary JSON values, near-valid frames of every client type (the
right ``type`` with fields missing, of the wrong type, huge, nested, unicode with lone
surrogates, extra fields) and raw text decoded the way the gateway decodes it (orjson). It must
return a frame that says exactly what the input said, or raise :class:`FrameError` with an
error code that docs/protocol.md documents, and nothing else. The REST readers in
``messaging.web.requests`` (``json_object``, ``field``, ``query_int``, ``bearer_token``) and the
chat routes' list reader may only raise the domain errors the app maps to 4xx answers.

``MESSAGING_TEST_FUZZ_EXAMPLES`` raises the number of examples per test (default 200).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from messaging.domain.errors import InvalidInput, Unauthenticated
from messaging.durability.api import _string_list
from messaging.protocol import frames
from messaging.protocol.frames import FrameError
from messaging.web import requests as web_requests

EXAMPLES = int(os.environ.get("MESSAGING_TEST_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize="MESSAGING_TEST_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
CLIENT_TYPES = ("auth", "send_message", "ack", "sync_request", "ping")
PARSER_CODES = {frames.ErrorCode.INVALID_FRAME, frames.ErrorCode.UNKNOWN_TYPE}
MAX_ERROR_MESSAGE = 512  # an error never echoes a huge input back


def documented_error_codes() -> set[str]:
    """The codes in docs/protocol.md's table of ``error`` frame codes."""
    codes: set[str] = set()
    for line in PROTOCOL_DOC.read_text().splitlines():
        first = line.split("|")[1] if line.startswith("|") else ""
        codes.update(re.findall(r"`([a-z_]+)`", first))
    return codes


DOCUMENTED = documented_error_codes()


def test_the_parser_codes_are_documented() -> None:
    assert {"invalid_frame", "unknown_type", "not_a_member"} <= DOCUMENTED
    assert PARSER_CODES <= DOCUMENTED


# ------------------------------------------------------------------ strategies

# Every code point, lone surrogates included (a Python str can hold them; JSON text as the
# gateway decodes it cannot, which the raw-text tests check).
any_char = st.characters(codec=None, exclude_categories=())
any_text = st.text(any_char, max_size=40)
huge_ints = st.one_of(
    st.integers(),
    st.sampled_from([-1, 2**53 - 1, 2**53, 2**63, -(2**63), 2**64, 10**30, -(10**30)]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5),
    max_leaves=20,
)
sequences = st.integers(0, frames.MAX_SEQUENCE)
ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=64)
valid_fields: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "auth": {"token": st.text(max_size=300), "device_id": ids},
    "send_message": {"chat_id": ids, "client_message_id": ids, "text": st.text(max_size=200)},
    "ack": {"chat_id": ids, "sequence": sequences},
    "sync_request": {
        "chats": st.none()
        | st.lists(
            st.fixed_dictionaries({"chat_id": ids, "last_acked_sequence": sequences}), max_size=4
        )
    },
    "ping": {"id": st.none() | st.text(max_size=64)},
}
wrong_values = st.one_of(
    json_values,
    st.builds(lambda c, n: c * n, st.characters(), st.integers(257, 5000)),  # over id limits
    st.integers(min_value=frames.MAX_SEQUENCE + 1),
    st.integers(max_value=-1),
    st.lists(st.fixed_dictionaries({"chat_id": json_values, "last_acked_sequence": huge_ints})),
    st.builds(lambda entry: [entry] * (frames.MAX_SYNC_CHATS + 1), json_values),
)


@st.composite
def valid_frames(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(CLIENT_TYPES))
    frame: dict[str, Any] = {"type": kind}
    for name, values in valid_fields[kind].items():
        frame[name] = draw(values)
    return frame


@st.composite
def near_valid_frames(draw: st.DrawFn) -> dict[str, Any]:
    """The right ``type``, then each field valid, wrong, or missing, and maybe extra ones."""
    frame = draw(valid_frames())
    for name in list(frame):
        if name == "type":
            continue
        choice = draw(st.sampled_from(["keep", "wrong", "drop"]))
        if choice == "wrong":
            frame[name] = draw(wrong_values)
        elif choice == "drop":
            del frame[name]
    frame.update(draw(st.dictionaries(any_text, json_values, max_size=3)))
    frame["type"] = draw(st.sampled_from(CLIENT_TYPES) | st.just(frame["type"]))
    return frame


frame_like = st.one_of(
    json_values,
    near_valid_frames(),
    st.dictionaries(st.just("type"), json_values, min_size=1),
    st.builds(lambda t: {"type": t}, any_text),
)


# ------------------------------------------------------------------ the parser's contract


def _is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_frame(data: object) -> frames.ClientFrame | None:
    """Parse ``data``; assert the result says what ``data`` said, or the error is documented."""
    refused: FrameError | None = None
    try:
        frame = frames.parse_client_frame(data)
    except FrameError as exc:
        refused = exc
    except Exception as exc:  # the contract: FrameError and nothing else
        pytest.fail(f"parse_client_frame raised {type(exc).__name__}: {exc!r} on {data!r:.300}")
    if refused is not None:
        assert refused.code in PARSER_CODES, refused.code
        assert refused.code in DOCUMENTED
        assert isinstance(refused.message, str)
        assert len(refused.message) <= MAX_ERROR_MESSAGE
        kind = data.get("type") if isinstance(data, dict) else None
        if refused.code == frames.ErrorCode.UNKNOWN_TYPE:
            assert isinstance(kind, str)
            assert kind not in CLIENT_TYPES
        if not isinstance(data, dict) or not isinstance(kind, str):
            assert refused.code == frames.ErrorCode.INVALID_FRAME
        return None
    assert isinstance(data, dict)
    kind = data["type"]
    match frame:
        case frames.Auth(token=token, device_id=device_id):
            assert kind == "auth"
            assert (token, device_id) == (data["token"], data["device_id"])
            assert isinstance(token, str)
            assert isinstance(device_id, str)
        case frames.SendMessage(chat_id=chat_id, client_message_id=cmid, text=text):
            assert kind == "send_message"
            assert (chat_id, cmid, text) == (
                data["chat_id"],
                data["client_message_id"],
                data["text"],
            )
            assert all(isinstance(v, str) for v in (chat_id, cmid, text))
        case frames.Ack(chat_id=chat_id, sequence=sequence):
            assert kind == "ack"
            assert (chat_id, sequence) == (data["chat_id"], data["sequence"])
            assert isinstance(chat_id, str)
            assert _is_seq(sequence)
            assert 0 <= sequence <= frames.MAX_SEQUENCE
        case frames.SyncRequest(chats=chats):
            assert kind == "sync_request"
            if chats is None:
                assert data.get("chats") is None
            else:
                assert len(chats) == len(data["chats"]) <= frames.MAX_SYNC_CHATS
                for position, raw in zip(chats, data["chats"], strict=True):
                    assert isinstance(position.chat_id, str)
                    assert position.chat_id == raw["chat_id"]
                    assert _is_seq(position.last_acked_sequence)
                    assert position.last_acked_sequence == raw["last_acked_sequence"]
                    assert 0 <= position.last_acked_sequence <= frames.MAX_SEQUENCE
        case frames.Ping(id=ping_id):
            assert kind == "ping"
            assert ping_id is None or (ping_id == data["id"] and isinstance(ping_id, str))
        case _:
            pytest.fail(f"not a client frame: {frame!r}")
    return frame


@FUZZ
@given(data=frame_like)
def test_any_json_value_is_a_frame_or_a_documented_error(data: object) -> None:
    check_frame(data)


@FUZZ
@given(data=near_valid_frames())
def test_near_valid_frames_are_parsed_or_refused(data: dict[str, Any]) -> None:
    check_frame(data)


@FUZZ
@given(data=valid_frames(), extra=st.dictionaries(any_text, json_values, max_size=3))
def test_valid_frames_are_accepted_whatever_extra_fields_they_carry(
    data: dict[str, Any], extra: dict[str, Any]
) -> None:
    frame = check_frame({**extra, **data})
    assert frame is not None, data


def decode(text: str | bytes) -> frames.ClientFrame | None:
    """What the gateway does with a text frame: orjson, then the parser."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None  # the gateway answers invalid_frame
    return check_frame(value)


@FUZZ
@given(text=st.text(any_char, max_size=200))
def test_raw_text_with_any_code_points(text: str) -> None:
    decode(text)


@FUZZ
@given(data=frame_like, cut=st.integers(0, 400), junk=st.binary(max_size=8))
def test_json_text_truncated_spliced_and_with_escaped_surrogates(
    data: object, cut: int, junk: bytes
) -> None:
    # The stdlib encoder writes lone surrogates as \\udxxx escapes and NaN as NaN: orjson must
    # refuse those with JSONDecodeError, never pass them on.
    text = json.dumps(data)
    decode(text)
    encoded = text.encode("utf-8", "surrogatepass")
    decode(encoded[:cut] + junk + encoded[cut:])


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000 + "]" * 5000,
        '{"type":' * 3000 + "1" + "}" * 3000,
        '{"type":"ack","chat_id":"d_x","sequence":' + "9" * 5000 + "}",
        '{"type":"ack","chat_id":"d_x","sequence":1e400}',
        '{"type":"send_message","chat_id":"d","client_message_id":"c","text":"\\ud800"}',
        '{"type":"ping","type":"teleport"}',
        '{"type":"sync_request","chats":null}',
        "\ufeff{}",
    ],
)
def test_pathological_texts(text: str) -> None:
    decode(text)


def test_nan_and_infinity_are_not_sequences() -> None:
    for value in (float("nan"), float("inf"), 1.0, True, "1", None):
        assert check_frame({"type": "ack", "chat_id": "d_x", "sequence": value}) is None


# ------------------------------------------------------------------ the REST request readers

REST_ERRORS = (InvalidInput, Unauthenticated)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as running:
        yield running


def _request(
    body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None, query: bytes = b""
) -> Request:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/x",
        "headers": headers or [],
        "query_string": query,
    }
    return Request(scope, receive)


def _read_body(runner: asyncio.Runner, body: bytes) -> dict[str, Any] | None:
    message = ""
    try:
        value = runner.run(web_requests.json_object(_request(body)))
    except InvalidInput as exc:
        value, message = None, exc.message
    except Exception as exc:
        pytest.fail(f"json_object raised {type(exc).__name__}: {exc!r} on {body[:200]!r}")
    assert len(message) <= MAX_ERROR_MESSAGE
    assert value is None or isinstance(value, dict)
    return value


bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda v: json.dumps(v).encode("utf-8", "surrogatepass"), json_values),
    st.builds(lambda t: t.encode("utf-8", "surrogatepass"), st.text(any_char, max_size=200)),
    st.builds(orjson.dumps, st.dictionaries(st.text(), st.text() | st.integers(-9, 9))),
)


@FUZZ
@given(body=bodies)
def test_json_object_reads_objects_or_refuses_with_invalid_input(
    runner: asyncio.Runner, body: bytes
) -> None:
    value = _read_body(runner, body)
    try:
        expected = orjson.loads(body)
    except orjson.JSONDecodeError:
        expected = None
    assert value == (expected if isinstance(expected, dict) else None)


def test_json_object_refuses_huge_and_deep_bodies(runner: asyncio.Runner) -> None:
    big = orjson.dumps({"title": "x" * (web_requests.MAX_BODY_BYTES + 1)})
    for body in (big, b"[" * 5000 + b"]" * 5000, b'{"a":' * 2000 + b"1" + b"}" * 2000):
        assert _read_body(runner, body) is None


def test_json_object_stops_reading_a_body_over_the_limit(runner: asyncio.Runner) -> None:
    """Refused once past the limit, not buffered whole first."""
    reads = 0

    async def receive() -> dict[str, object]:
        nonlocal reads
        reads += 1  # 400 KiB in all: a reader that buffers everything ends too, and fails
        return {"type": "http.request", "body": b" " * 4096, "more_body": reads < 100}

    scope = {"type": "http", "method": "POST", "path": "/v1/x", "headers": []}
    with pytest.raises(InvalidInput, match="over"):
        runner.run(web_requests.json_object(Request(scope, receive)))
    assert reads == web_requests.MAX_BODY_BYTES // 4096 + 1


def test_json_object_refuses_a_declared_length_over_the_limit(runner: asyncio.Runner) -> None:
    async def receive() -> dict[str, object]:
        raise AssertionError("the body was read")

    length = str(web_requests.MAX_BODY_BYTES + 1).encode()
    headers = [(b"content-length", length)]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    with pytest.raises(InvalidInput, match="over"):
        runner.run(web_requests.json_object(Request(scope, receive)))


@FUZZ
@given(
    body=st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values),
    name=st.sampled_from(["a", "b", "c"]),
    kind=st.sampled_from([str, int, list, dict, bool, float]),
    required=st.booleans(),
)
def test_field_returns_its_kind_or_refuses(
    body: dict[str, Any], name: str, kind: type, required: bool
) -> None:
    try:
        value = web_requests.field(body, name, kind, required=required)
    except InvalidInput:
        assert (
            body.get(name) is None
            or not isinstance(body[name], kind)
            or (kind is int and isinstance(body[name], bool))
        )
        return
    if value is None:
        assert not required
        assert body.get(name) is None
        return
    assert isinstance(value, kind)
    assert not (kind is int and isinstance(value, bool))
    assert value is body[name]


@FUZZ
@given(body=st.dictionaries(st.sampled_from(["user_ids", "x"]), json_values | wrong_values))
def test_the_user_id_list_reader(body: dict[str, Any]) -> None:
    try:
        values = _string_list(body, "user_ids", max_items=10)
    except InvalidInput:
        return
    assert isinstance(values, list)
    assert len(values) <= 10
    assert all(isinstance(v, str) for v in values)


query_values = st.one_of(
    st.text(any_char, max_size=30),
    st.integers().map(str),
    st.sampled_from(["", " 5 ", "1_000", "0x10", "١٢", "+3", "-0", "9" * 5000, "1e3", "NaN"]),
)


@FUZZ
@given(raw=query_values, default=st.none() | st.integers(1, 50))
def test_query_int_is_in_range_or_refused(raw: str, default: int | None) -> None:
    from urllib.parse import quote

    query = ("limit=" + quote(raw.encode("utf-8", "surrogatepass"))).encode("ascii")
    message = ""
    try:
        value = web_requests.query_int(_request(query=query), "limit", default, 1, 200)
    except InvalidInput as exc:
        value, message = None, exc.message
    except Exception as exc:
        pytest.fail(f"query_int raised {type(exc).__name__}: {exc!r} on {raw!r:.100}")
    assert len(message) <= MAX_ERROR_MESSAGE
    if value is None:
        assert message
        return
    assert 1 <= value <= 200


def test_query_int_default_when_absent() -> None:
    assert web_requests.query_int(_request(query=b"other=1"), "limit", 50, 1, 200) == 50


@FUZZ
@given(header=st.binary(max_size=100) | st.text(max_size=60).map(str.encode))
def test_bearer_token_is_a_token_or_unauthenticated(header: bytes) -> None:
    request = _request(headers=[(b"authorization", header)])
    try:
        token = web_requests.bearer_token(request)
    except Unauthenticated:
        return
    except Exception as exc:
        pytest.fail(f"bearer_token raised {type(exc).__name__}: {exc!r} on {header!r}")
    assert token
    assert token == token.strip()
    assert header.decode("latin-1").lower().startswith("bearer ")
