"""A client that stops reading is closed with 4009 and its socket is gone within a bound
(ADR 0021, docs/protocol.md "Close codes"): the gateway on uvicorn with the lean transport,
every port a fake, on 127.0.0.1 with small socket buffers so that a stalled reader shows fast.

Before ADR 0021 the close frame waited behind the full write buffer: a client that read again
later saw 1006, and the server's socket stayed open while the peer kept its window shut."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import attrs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from messaging.bootstrap import gateway_config
from messaging.connection.registry import LocalConnections
from messaging.connection.transport import CLOSE_TIMEOUT_SECONDS
from messaging.domain.model import Message
from messaging.metrics import Metrics
from messaging.protocol import frames
from messaging.protocol.delivery import Delivery
from messaging.settings import Settings
from tests.polling import eventually
from tests.unit.test_gateway_memory import Nothing, gateway_app, protocols, serving

CONFIG = attrs.evolve(
    gateway_config(Settings()), outbound_queue_messages=20, outbound_queue_bytes=65536
)
TEXT = "y" * 4000


async def stalled_client(url: str) -> tuple[ClientConnection, socket.socket]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])))
    sock.setblocking(False)
    client = await connect(url, sock=sock, compression=None, max_queue=1, close_timeout=1)
    await client.send(frames.encode(frames.Auth(token="t", device_id="d")).decode())
    ready = frames.decode_server_frame(await client.recv())
    assert isinstance(ready, frames.Ready)
    client.transport.pause_reading()
    return client, sock


async def flood_until_closed(local: LocalConnections, metrics: Metrics) -> None:
    """Deliver messages to the stalled user until the gateway gives up on it (4009)."""
    for sequence in range(1, 5000):
        message = Message(
            chat_id="d_x",
            sequence=sequence,
            sender_id="u_other",
            sender_device="d",
            client_message_id=f"m{sequence}",
            text=TEXT,
            created_at_ms=0,
        )
        local.deliver([Delivery(message, ("u_t",))])
        await asyncio.sleep(0.001)
        if not local.all():
            return
    raise AssertionError("the stalled client was never disconnected")


async def test_a_client_that_stops_reading_is_cut_off_within_the_close_timeout() -> None:
    metrics = Metrics()
    local = LocalConnections(metrics)
    app = gateway_app(Nothing(), local, CONFIG)
    async with serving(app, send_buffer=4096) as (url, server):
        client, _ = await stalled_client(url)
        await flood_until_closed(local, metrics)
        gave_up = time.monotonic()
        # The server's socket is gone within the bound though the client never reads again.
        await eventually(lambda: not protocols(server), seconds=CLOSE_TIMEOUT_SECONDS + 3)
        assert time.monotonic() - gave_up < CLOSE_TIMEOUT_SECONDS + 2
        client.transport.resume_reading()
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    await client.recv()
        # Cut off before it read the close frame: no close code (1006), as protocol.md says.
        assert client.close_code in (None, 1006)


async def test_a_client_that_reads_again_in_time_sees_4009_after_the_queued_frames() -> None:
    metrics = Metrics()
    local = LocalConnections(metrics)
    app = gateway_app(Nothing(), local, CONFIG)
    async with serving(app, send_buffer=4096) as (url, _):
        client, _ = await stalled_client(url)
        await flood_until_closed(local, metrics)
        await asyncio.sleep(0.5)  # stalled a while after the server gave up, within the bound
        client.transport.resume_reading()
        sequences: list[int] = []
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    frame = frames.decode_server_frame(await client.recv())
                    assert isinstance(frame, frames.MessageFrame)
                    sequences.append(frame.sequence)
        assert sequences
        assert client.close_code == frames.CloseCode.SLOW_CONSUMER
        assert sequences == list(range(1, len(sequences) + 1)), "in order, none skipped"
