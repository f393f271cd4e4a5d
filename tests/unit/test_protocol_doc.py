"""docs/protocol.md and the one typed definition of protocol v1 (``messaging.protocol.frames``)
agree (ADR 0021): every frame type, field, nested object, error code (and whether it is
retriable) and close code of the definition is documented, and the page documents nothing the
definition lacks. Every JSON example on the page decodes as the frame it shows."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from messaging.domain import errors
from messaging.protocol import frames

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
OPTIONAL = re.compile(r"\((optional|when true)\)")


def _rows_after(header: str) -> list[list[str]]:
    lines = DOC.splitlines()
    start = lines.index(header) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def documented_fields(cell: str) -> dict[str, bool]:
    """``"`a`, `b` (optional)"`` -> {"a": required, "b": optional}."""
    fields: dict[str, bool] = {}
    for item in cell.split(","):
        names = re.findall(r"`([a-z_]+)`", item)
        assert len(names) == 1, f"one field per item: {item!r}"
        fields[names[0]] = OPTIONAL.search(item) is None
    return fields


def struct_fields(cls: type[msgspec.Struct]) -> dict[str, bool]:
    """Field name -> required (no default), as on the wire."""
    return {field.encode_name: field.required for field in msgspec.structs.fields(cls)}


def test_every_frame_and_field_is_documented_and_nothing_else() -> None:
    rows = _rows_after("| direction | type | fields |")
    documented = {}
    for direction, kind, fields in rows:
        [name] = re.findall(r"`([a-z_]+)`", kind)
        documented[name] = (direction, documented_fields(fields))
    defined = {
        frames.tag(cls): ("client → server", struct_fields(cls)) for cls in frames.CLIENT_FRAMES
    } | {frames.tag(cls): ("server → client", struct_fields(cls)) for cls in frames.SERVER_FRAMES}
    assert documented == defined


def test_every_nested_object_is_documented() -> None:
    rows = _rows_after("| inside | object | fields |")
    documented = {
        (inside, re.findall(r"`([a-z_]+)`", name)[0]): documented_fields(fields)
        for inside, name, fields in rows
    }
    defined = {
        ("ready", "limits"): struct_fields(frames.Limits),
        ("sync_request", "chats"): struct_fields(frames.SyncPosition),
        ("error", "ref"): struct_fields(frames.ErrorRef),
    }
    assert documented == defined


def test_every_error_code_and_its_retriability_is_documented_and_nothing_else() -> None:
    documented: dict[str, bool] = {}
    for codes, _when, retriable in _rows_after("| code | when | retriable |"):
        for code in re.findall(r"`([a-z_]+)`", codes):
            documented[code] = retriable.startswith("yes")
    assert documented == {code.value: code.retriable for code in frames.ErrorCode}


def test_every_close_code_is_documented_and_nothing_else() -> None:
    """1008 closes before the handshake: a refused ``Origin`` is answered HTTP 403 instead."""
    documented = {int(row[0]) for row in _rows_after("| code | meaning | what the client does |")}
    sent = {int(code) for code in frames.CloseCode} - {frames.CloseCode.POLICY_VIOLATION}
    assert documented == sent | frames.TRANSPORT_CLOSE_CODES
    assert "answered HTTP 403" in DOC


def test_every_domain_error_a_socket_can_carry_is_an_error_code() -> None:
    """The codes of the domain errors the gateway answers with (every ``MessagingError`` but
    the REST-only ones) are all protocol codes: none is turned into ``internal_error``."""
    rest_only = {"unauthenticated", "device_mismatch", "forbidden", "conflict"}
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.MessagingError)
    }
    for code in codes - rest_only:
        assert frames.ErrorCode.of(code).value == code
    assert frames.ErrorCode.of("forbidden") is frames.ErrorCode.INTERNAL_ERROR


def test_the_largest_sequence_is_stated() -> None:
    assert str(frames.MAX_SEQUENCE) in DOC


def json_examples() -> list[str]:
    examples: list[str] = []
    for block in re.findall(r"```json\n(.*?)```", DOC, flags=re.S):
        try:
            msgspec.json.decode(block)
            examples.append(block)
        except msgspec.DecodeError:  # one object per line
            examples.extend(line for line in block.splitlines() if line.strip())
    return examples


@pytest.mark.parametrize("example", json_examples())
def test_every_json_example_is_a_valid_frame(example: str) -> None:
    kind = msgspec.json.decode(example)["type"]
    if kind in frames.CLIENT_TYPES:
        frame: object = frames.decode_client_frame(example)
    else:
        frame = frames.decode_server_frame(example)
    assert frames.kind(frame) == kind  # type: ignore[arg-type]


def test_the_demo_page_retries_the_codes_the_protocol_says_are_retriable() -> None:
    """The demo page's client (``src/messaging/web/static/client.js``) cannot import the
    definition: its list of retriable codes is checked against ``ErrorCode.retriable``."""
    script = (
        Path(__file__).resolve().parents[2] / "src/messaging/web/static/client.js"
    ).read_text()
    [listed] = re.findall(r"const RETRIABLE = new Set\(\[(.*?)\]\)", script)
    assert set(re.findall(r'"([a-z_]+)"', listed)) == {
        code.value for code in frames.ErrorCode if code.retriable
    }
