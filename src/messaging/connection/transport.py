"""The WebSocket transport under the gateway: uvicorn's sans-I/O ``websockets`` protocol, minus
what it keeps for the life of a socket without using it after the handshake.

uvicorn's ``WebSocketsSansIOProtocol`` keeps the parsed upgrade request and the prepared 101
response (``self.request``, ``self.response``) until the socket closes, though it reads neither
once the handshake is done. Memory per idle socket is what bounds how many sockets one process
holds, so this subclass forgets both as soon as the handshake completes: the response and its
headers, about 2 KB per socket (tracemalloc), are freed at once. The request is also held by a
local variable of ``websockets``' suspended parser (``ServerProtocol.parse``), so forgetting it
here frees nothing yet. Nothing else changes: the ASGI scope (with the request's headers) is
untouched, and frames, pings, closes and backpressure are uvicorn's.

``tests/unit/test_gateway_memory.py`` pins the uvicorn attributes this relies on, so an upgrade
that renames them fails a test instead of silently keeping the memory.
"""

from __future__ import annotations

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

HANDSHAKE_ATTRIBUTES = ("request", "response")
"""What uvicorn keeps from the handshake and reads only until it completes."""


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            self.forget_handshake()

    def forget_handshake(self) -> None:
        for name in HANDSHAKE_ATTRIBUTES:
            self.__dict__.pop(name, None)
