"""The gateway hands acks to the coalescer without waiting (ADR 0025): a send behind an ack
whose write has not landed is answered at once, and the ``acked`` follows when it lands."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import orjson

from messaging.bootstrap import gateway_config
from messaging.connection.gateway import Gateway
from messaging.connection.outbound import OutboundQueue
from messaging.connection.registry import LocalConnections
from messaging.connection.session import Connection
from messaging.domain.errors import MessagingError, Unavailable
from messaging.domain.model import Message, SendResult
from messaging.metrics import Metrics
from messaging.protocol import frames
from messaging.protocol.chat import ConversationReader
from messaging.protocol.delivery import RouteRegistry
from messaging.protocol.identity import SessionChecker, TokenVerifier
from messaging.settings import Settings

CHAT = "g_00000000000000000000000000000001"


class HeldAcks:
    """A ``DeliveryAckSink`` whose writes land only when the test says so."""

    def __init__(self) -> None:
        self.waiting: list[tuple[int, Callable[[int | MessagingError], None]]] = []

    def submit(
        self,
        user_id: str,
        chat_id: str,
        sequence: int,
        *,
        delivered: bool,
        reply: Callable[[int | MessagingError], None],
    ) -> None:
        self.waiting.append((sequence, reply))


class Ingest:
    async def send(self, **kwargs: Any) -> SendResult:
        message = Message(
            chat_id=kwargs["chat_id"],
            sequence=7,
            sender_id=kwargs["sender_id"],
            sender_device=kwargs["sender_device"],
            client_message_id=kwargs["client_message_id"],
            text=kwargs["text"],
            created_at_ms=1,
        )
        return SendResult(message=message, duplicate=False)


class Sent:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def __call__(self, text: str) -> None:
        self.frames.append(orjson.loads(text))


def gateway(acks: HeldAcks) -> Gateway:
    metrics = Metrics()
    return Gateway(
        tokens=cast(TokenVerifier, None),
        sessions=cast(SessionChecker, None),
        ingest=Ingest(),
        reader=cast(ConversationReader, None),
        acks=acks,
        routes=cast(RouteRegistry, None),
        local=LocalConnections(metrics),
        config=gateway_config(Settings()),
        metrics=metrics,
    )


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_send_behind_an_unwritten_ack_is_answered_and_the_acked_follows() -> None:
    acks = HeldAcks()
    sent = Sent()
    conn = Connection("u1", "d1", OutboundQueue(100, 65536), Metrics(), sent)
    gw = gateway(acks)
    await gw._work(conn, (frames.Ack(chat_id=CHAT, sequence=3), time.monotonic()))
    await gw._work(
        conn,
        (frames.SendMessage(chat_id=CHAT, client_message_id="c1", text="hi"), time.monotonic()),
    )
    await settle()
    assert [f["type"] for f in sent.frames] == ["send_ack"]
    ((sequence, reply),) = acks.waiting
    assert sequence == 3
    reply(5)
    await settle()
    assert sent.frames[-1] == {"type": "acked", "chat_id": CHAT, "last_acked_sequence": 5}
    await conn.shutdown()


async def test_an_ack_the_store_did_not_take_is_answered_with_a_retriable_error() -> None:
    acks = HeldAcks()
    sent = Sent()
    conn = Connection("u1", "d1", OutboundQueue(100, 65536), Metrics(), sent)
    await gateway(acks)._work(conn, (frames.Ack(chat_id=CHAT, sequence=3), time.monotonic()))
    acks.waiting[0][1](Unavailable("the ack was not stored; ack again"))
    await settle()
    error = sent.frames[-1]
    assert (error["type"], error["code"], error["retriable"]) == ("error", "unavailable", True)
    assert error["ref"] == {"chat_id": CHAT}
    await conn.shutdown()
