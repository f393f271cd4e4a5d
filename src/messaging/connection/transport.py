"""The WebSocket transport under the gateway: uvicorn's sans-I/O ``websockets`` protocol, minus
what it keeps for the life of a socket without using it after the handshake, and with a close
that neither waits for a peer that stopped reading nor lets its socket outlive a bound.

uvicorn's ``WebSocketsSansIOProtocol`` keeps the parsed upgrade request and the prepared 101
response (``self.request``, ``self.response``) until the socket closes, though it reads neither
once the handshake is done. Memory per idle socket is what bounds how many sockets one process
holds, so this subclass forgets both as soon as the handshake completes: the response and its
headers, about 2 KB per socket (tracemalloc), are freed at once. The request is also held by a
local variable of ``websockets``' suspended parser (``ServerProtocol.parse``), so forgetting it
here frees nothing yet. Nothing else changes: the ASGI scope (with the request's headers) is
untouched, and frames, pings and backpressure are uvicorn's.

Closing (ADR 0021). uvicorn's ``send`` waits until the transport's write buffer is below its
high-water mark before it writes anything, the close frame included, and after the close it
gives the peer 10 s to answer, then calls ``transport.close()``, which itself waits for the
buffer to drain. A peer that stopped reading (a slow consumer, closed with 4009) would therefore
get no close frame at all (it saw 1006 once it read again) and its socket could stay open for as
long as the peer kept its TCP window shut. Here the close frame is written at once, queued
behind what the buffer already holds, and a peer that has not completed the closing handshake
:data:`CLOSE_TIMEOUT_SECONDS` after it is cut off (``transport.abort()``). A client that reads
again within that time sees everything queued before the close, then the close code; one that
stays stalled longer sees the connection reset (1006).

``tests/unit/test_gateway_memory.py`` pins the uvicorn attributes this relies on, so an upgrade
that renames them fails a test instead of silently keeping the memory;
``tests/unit/test_slow_consumer_close.py`` proves the close and its bound.
"""

from __future__ import annotations

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

HANDSHAKE_ATTRIBUTES = ("request", "response")
"""What uvicorn keeps from the handshake and reads only until it completes."""

CLOSE_TIMEOUT_SECONDS = 5.0
"""How long after the server's close frame the peer has to answer it before its socket is
aborted (docs/protocol.md, "Close codes")."""


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    async def send(self, message: ASGISendEvent) -> None:
        closing = message["type"] == "websocket.close" and self.handshake_complete
        if closing and not self.writable.is_set() and not self.close_sent:
            # The write buffer is over its high-water mark (the peer is not reading): do not
            # wait for room that may never come; queue the close frame behind the buffer.
            self.writable.set()
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            self.forget_handshake()
        elif closing and self.close_timer is not None:
            # uvicorn's timer calls transport.close(), which waits for the buffer to drain.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(CLOSE_TIMEOUT_SECONDS, self.transport.abort)

    def forget_handshake(self) -> None:
        for name in HANDSHAKE_ATTRIBUTES:
            self.__dict__.pop(name, None)
