"""moto's DynamoDB API server with every request serialized: ``python -m
messaging.devstack.moto_server --host 127.0.0.1 --port P``.

Why serialized: moto's own server (``moto_server``) runs its Flask app on werkzeug's threaded
server, and moto's in-memory backends take no locks. Under concurrency that was observed here to

* lose ``UpdateItem ADD`` increments (two threads read the same old value, both write old + 1),
* answer ``TransactWriteItems`` with HTTP 500 (a transaction iterates a table another thread is
  changing), and
* undo other clients' writes: a cancelled transaction rolls back by restoring a copy of the whole
  table taken when it started, so every write that landed in between disappears.

Real DynamoDB is linearizable per item and transactions are isolated, and the project's
correctness (sequence allocation, idempotency keys, outbox) rests on exactly that. One lock
around the WSGI application makes moto process one request at a time, which restores those
guarantees at the price of throughput. Connections are still accepted and request bodies read
on werkzeug's per-connection threads; only the application call and the building of its response
happen under the lock. (werkzeug answers every request with ``Connection: close``, so each request
is a new TCP connection; that is werkzeug's choice, not this module's.)

Everything happens in :func:`main`; importing this module does no I/O and does not import moto.
"""

from __future__ import annotations

import argparse
import io
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any

WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]


class SerializedApp:
    """A WSGI middleware that runs the wrapped application for one request at a time.

    The request body is read before the lock is taken (a slow client cannot stall everyone), and
    the response is fully materialized and closed while the lock is still held (a lazily
    generated body cannot run concurrently with the next request).
    """

    def __init__(self, app: WSGIApp) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
        _buffer_body(environ)
        with self._lock:
            result = self._app(environ, start_response)
            try:
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()


def _buffer_body(environ: WSGIEnviron) -> None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ.get("wsgi.input")
    if stream is None:
        return
    body = stream.read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m messaging.devstack.moto_server",
        description="moto's DynamoDB API server, one request at a time (see the module docstring)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=5000, help="port to bind; 0 picks a free one (default 5000)"
    )
    parser.add_argument(
        "--log-requests", action="store_true", help="log one line per request to stderr"
    )
    return parser.parse_args(argv)


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    if not args.log_requests:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    app = SerializedApp(DomainDispatcherApplication(create_backend_app))
    server = make_server(
        args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler
    )
    signal.signal(signal.SIGTERM, _stop)
    port = int(server.socket.getsockname()[1])
    print(f"moto (serialized) listening on http://{args.host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
