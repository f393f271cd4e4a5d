"""moto's DynamoDB API server with every request serialized: ``python -m
messaging.devstack.moto_server --host 127.0.0.1 --port P``.

Why serialized: moto's own server (``python -m moto.server``) runs its Flask app on werkzeug's
threaded server, and moto's in-memory backends take no locks. Under concurrency that was observed
here to

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

It also stops a memory leak. moto's ``BaseModel.__new__`` appends every model instance to a
class-level ``instances_tracked`` list (only read by the ``/moto-api`` dashboard), and
``TransactWriteItems`` deep-copies every table it touches as its rollback snapshot: each
transaction therefore pins a full copy of its tables forever, even after DeleteTable (a 2,000-
transaction benchmark grew the process to 7 GB). After each request, under the lock, the
tracking lists are emptied (``moto.core.model_instances.reset_model_data``, which clears only
those lists, not the backends' data); the dashboard's data view is then empty.

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


# werkzeug's request handler always sends its own Server and Date headers; moto's app sends them
# too. Duplicate singleton headers are invalid HTTP, and aiohttp (hence aiobotocore) rejects the
# response with "Duplicate 'Server' header found" in its strict mode (asyncio debug / -X dev).
SERVER_SUPPLIED_HEADERS = frozenset({"server", "date"})


class SerializedApp:
    """A WSGI middleware that runs the wrapped application for one request at a time.

    The request body is read before the lock is taken (a slow client cannot stall everyone), and
    the response is fully materialized and closed while the lock is still held (a lazily
    generated body cannot run concurrently with the next request). It also drops the app's
    ``Server`` and ``Date`` headers, which the HTTP server sends itself.
    """

    def __init__(self, app: WSGIApp, after_each: Callable[[], None] = lambda: None) -> None:
        self._app = app
        self._after_each = after_each
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
        _buffer_body(environ)

        def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            kept = [(k, v) for k, v in headers if k.lower() not in SERVER_SUPPLIED_HEADERS]
            return start_response(status, kept, *exc_info)

        with self._lock:
            result = self._app(environ, start)
            try:
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
                self._after_each()


def _buffer_body(environ: WSGIEnviron) -> None:
    """Read the whole request body now (outside the lock) and hand the app an in-memory copy."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > 0:
        body = stream.read(length)
        environ["CONTENT_LENGTH"] = str(len(body))
    elif environ.get("wsgi.input_terminated"):  # chunked: the server marks the end of the body
        body = stream.read()
    else:
        return
    environ["wsgi.input"] = io.BytesIO(body)


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

    from moto.core.model_instances import reset_model_data
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    if not args.log_requests:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    app = SerializedApp(
        DomainDispatcherApplication(create_backend_app), after_each=reset_model_data
    )
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
