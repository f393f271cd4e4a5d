"""The WebSocket baseline's server: a bare Starlette echo on one uvicorn process, configured
like ``messaging serve`` (same WebSocket implementation, event loop and HTTP parser).

``python -m messaging.bench.echo --port PORT``; ``GET /healthz`` answers 200; ``/echo`` sends
every text frame back.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


async def healthz(_: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/healthz", healthz), WebSocketRoute("/echo", echo)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        ws="websockets-sansio",
        ws_max_size=1 << 20,
        log_level="warning",
        lifespan="off",
    )


if __name__ == "__main__":
    main()
