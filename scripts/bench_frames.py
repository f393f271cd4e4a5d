"""Frame codecs on the gateway's hot path, measured three ways (ADR 0021).

Decoding a client ``send_message`` and ``ack`` frame (text -> typed frame, validated) and
encoding a server ``message`` and ``send_ack`` frame (typed -> UTF-8 bytes) with:

* ``dict``: the code before ADR 0021 (orjson + a hand-written parser; dicts + orjson + a copy);
* ``attrs``: attrs classes converted by cattrs (orjson for the JSON text);
* ``msgspec``: msgspec Structs with a tag, one ``msgspec.json.Decoder`` for the tagged union.
* ``project``: ``messaging.protocol.frames`` as it is (msgspec, built from a domain
  ``Message``, with the copy that gives queued frames an allocation of their own size), once it
  exists.

``dict`` and ``project`` do the whole work of the gateway before and after (from a domain
``Message``, to bytes fit to be queued); ``attrs+cattrs`` and ``msgspec`` compare the codecs.

Bounded loops (``--loops`` calls, default 20,000, best of ``--repeat`` runs, default 30, the
columns measured in turns); prints ns per operation.
cattrs is not a dependency of the project: the ``attrs`` column is skipped when it is missing.
Run: ``python scripts/bench_frames.py``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Annotated, Any

import attrs
import msgspec
import orjson

MAX_SEQUENCE = 2**53 - 1
SEND = (
    b'{"type":"send_message","chat_id":"d_0123456789abcdef0123456789abcdef",'
    b'"client_message_id":"web-3f2a9c1e-17","text":"hello there, how are you today?"}'
)
ACK = b'{"type":"ack","chat_id":"d_0123456789abcdef0123456789abcdef","sequence":42}'
MESSAGE = {
    "chat_id": "d_0123456789abcdef0123456789abcdef",
    "sequence": 42,
    "sender_id": "u_0123456789abcdef",
    "sender_device": "web-3f2a9c1e",
    "client_message_id": "web-3f2a9c1e-17",
    "text": "hello there, how are you today?",
    "created_at_ms": 1764240000123,
}


# ------------------------------------------------------------------ dict (before ADR 0021)


def _string(data: dict[str, Any], name: str, max_len: int = 256) -> str:
    value = data.get(name)
    if not isinstance(value, str) or len(value) > max_len:
        raise ValueError(name)
    return value


def _integer(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEQUENCE:
        raise ValueError(name)
    return value


@attrs.frozen
class LegacySend:
    chat_id: str
    client_message_id: str
    text: str


@attrs.frozen
class LegacyAck:
    chat_id: str
    sequence: int


def legacy_parse(data: object) -> object:
    """The hand-written parser of before ADR 0021 (its two hot cases), to compare against."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    kind = data.get("type")
    if kind == "send_message":
        return LegacySend(
            chat_id=_string(data, "chat_id"),
            client_message_id=_string(data, "client_message_id"),
            text=_string(data, "text", max_len=1 << 20),
        )
    if kind == "ack":
        return LegacyAck(chat_id=_string(data, "chat_id"), sequence=_integer(data, "sequence"))
    raise ValueError("unknown type")


def dict_decode(raw: bytes) -> object:
    return legacy_parse(orjson.loads(raw))


def _message() -> Any:
    from messaging.domain.model import Message

    return Message(**MESSAGE)


def dict_encode_message(msg: Any) -> bytes:
    """``frames.message`` + ``encode_frame`` before ADR 0021 (from a domain ``Message``)."""
    data = {
        "chat_id": msg.chat_id,
        "sequence": msg.sequence,
        "sender_id": msg.sender_id,
        "sender_device": msg.sender_device,
        "client_message_id": msg.client_message_id,
        "text": msg.text,
        "created_at_ms": msg.created_at_ms,
    }
    return bytes(memoryview(orjson.dumps({"type": "message", **data})))


def dict_encode_send_ack(msg: Any) -> bytes:
    frame = {
        "type": "send_ack",
        "chat_id": msg.chat_id,
        "client_message_id": msg.client_message_id,
        "sequence": msg.sequence,
        "duplicate": False,
        "created_at_ms": msg.created_at_ms,
    }
    return bytes(memoryview(orjson.dumps(frame)))


# ------------------------------------------------------------------ msgspec

Id = Annotated[str, msgspec.Meta(max_length=256)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQUENCE)]


class MSend(msgspec.Struct, tag="send_message", tag_field="type", frozen=True):
    chat_id: str
    client_message_id: str
    text: str


class MAck(msgspec.Struct, tag="ack", tag_field="type", frozen=True):
    chat_id: Id
    sequence: Seq


class MPing(msgspec.Struct, tag="ping", tag_field="type", frozen=True):
    id: str | None = None


class MMessage(msgspec.Struct, tag="message", tag_field="type", omit_defaults=True):
    chat_id: str
    sequence: int
    sender_id: str
    sender_device: str
    client_message_id: str
    text: str
    created_at_ms: int
    replay: bool = False


class MSendAck(msgspec.Struct, tag="send_ack", tag_field="type"):
    chat_id: str
    client_message_id: str
    sequence: int
    duplicate: bool
    created_at_ms: int


m_decoder = msgspec.json.Decoder(MSend | MAck | MPing)
m_encoder = msgspec.json.Encoder()


def m_encode_message() -> bytes:
    m = MESSAGE
    return m_encoder.encode(
        MMessage(
            chat_id=m["chat_id"],
            sequence=m["sequence"],
            sender_id=m["sender_id"],
            sender_device=m["sender_device"],
            client_message_id=m["client_message_id"],
            text=m["text"],
            created_at_ms=m["created_at_ms"],
        )
    )


def m_encode_send_ack() -> bytes:
    m = MESSAGE
    return m_encoder.encode(
        MSendAck(
            chat_id=m["chat_id"],
            client_message_id=m["client_message_id"],
            sequence=m["sequence"],
            duplicate=False,
            created_at_ms=m["created_at_ms"],
        )
    )


# ------------------------------------------------------------------ attrs + cattrs


def _attrs_codecs() -> dict[str, Callable[[], object]] | None:
    try:
        from cattrs.preconf.orjson import make_converter
        from cattrs.strategies import configure_tagged_union
    except ImportError:
        return None

    def _non_negative(_i: object, _a: object, value: int) -> None:
        if isinstance(value, bool) or not 0 <= value <= MAX_SEQUENCE:
            raise ValueError("sequence out of range")

    @attrs.frozen
    class ASend:
        chat_id: str = attrs.field(validator=attrs.validators.instance_of(str))
        client_message_id: str = attrs.field(validator=attrs.validators.instance_of(str))
        text: str = attrs.field(validator=attrs.validators.instance_of(str))

    @attrs.frozen
    class AAck:
        chat_id: str = attrs.field(validator=attrs.validators.max_len(256))
        sequence: int = attrs.field(validator=_non_negative)

    @attrs.frozen
    class AMessage:
        chat_id: str
        sequence: int
        sender_id: str
        sender_device: str
        client_message_id: str
        text: str
        created_at_ms: int

    @attrs.frozen
    class ASendAck:
        chat_id: str
        client_message_id: str
        sequence: int
        duplicate: bool
        created_at_ms: int

    converter = make_converter(forbid_extra_keys=False)
    # cattrs' orjson preset converts str and int by calling str()/int(): strict checks need
    # the validators above.
    configure_tagged_union(
        ASend | AAck,
        converter,
        tag_name="type",
        tag_generator=lambda cls: {ASend: "send_message", AAck: "ack"}[cls],
    )
    union: Any = ASend | AAck
    tags = {AMessage: "message", ASendAck: "send_ack"}

    def encode(value: object) -> bytes:
        data = converter.unstructure(value)
        return bytes(memoryview(orjson.dumps({"type": tags[type(value)], **data})))

    m = MESSAGE
    return {
        "decode send_message": lambda: converter.structure(orjson.loads(SEND), union),
        "decode ack": lambda: converter.structure(orjson.loads(ACK), union),
        "encode message": lambda: encode(AMessage(**m)),
        "encode send_ack": lambda: encode(
            ASendAck(
                chat_id=m["chat_id"],
                client_message_id=m["client_message_id"],
                sequence=m["sequence"],
                duplicate=False,
                created_at_ms=m["created_at_ms"],
            )
        ),
    }


def _project_codecs() -> dict[str, Callable[[], object]] | None:
    """The project's own codec (``messaging.protocol.frames``) once it is typed."""
    from messaging.protocol import frames

    if not hasattr(frames, "decode_client_frame"):
        return None
    from messaging.domain.model import Message

    message = Message(**MESSAGE)
    return {
        "decode send_message": lambda: frames.decode_client_frame(SEND),
        "decode ack": lambda: frames.decode_client_frame(ACK),
        "encode message": lambda: frames.encode(frames.message(message)),
        "encode send_ack": lambda: frames.encode(frames.send_ack(message, duplicate=False)),
    }


def best_ns(fns: list[Callable[[], object]], loops: int, repeat: int) -> list[float]:
    """The best time per call of each of ``fns``, measured in turns (one run of each, then
    again), so that a load that comes and goes on the machine weighs on all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter_ns()
            for _ in range(loops):
                fn()
            best[i] = min(best[i], (time.perf_counter_ns() - start) / loops)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    loops = max(1, min(args.loops, 5_000_000))
    message = _message()
    columns: dict[str, dict[str, Callable[[], object]] | None] = {
        "dict": {
            "decode send_message": lambda: dict_decode(SEND),
            "decode ack": lambda: dict_decode(ACK),
            "encode message": lambda: dict_encode_message(message),
            "encode send_ack": lambda: dict_encode_send_ack(message),
        },
        "attrs+cattrs": _attrs_codecs(),
        "msgspec": {
            "decode send_message": lambda: m_decoder.decode(SEND),
            "decode ack": lambda: m_decoder.decode(ACK),
            "encode message": m_encode_message,
            "encode send_ack": m_encode_send_ack,
        },
        "project": _project_codecs(),
    }
    present = {name: codecs for name, codecs in columns.items() if codecs is not None}
    print(f"{'ns/op':22}" + "".join(f"{name:>14}" for name in present))
    for operation in ("decode send_message", "decode ack", "encode message", "encode send_ack"):
        cells = best_ns([codecs[operation] for codecs in present.values()], loops, args.repeat)
        print(f"{operation:22}" + "".join(f"{cell:14.0f}" for cell in cells))


if __name__ == "__main__":
    main()
