"""Reading REST requests: bearer tokens and JSON bodies, with clear 4xx errors."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from messaging.domain.errors import InvalidInput, Unauthenticated
from messaging.protocol.identity import Principal, TokenVerifier

MAX_BODY_BYTES = 64 * 1024


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing bearer token: send 'Authorization: Bearer <access token>'")
    return token.strip()


def authenticate(request: Request, verifier: TokenVerifier) -> Principal:
    return verifier.verify(bearer_token(request))


async def json_object(request: Request) -> dict[str, Any]:
    body = await _limited_body(request)
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput("request body must be a JSON object")
    return value


async def _limited_body(request: Request) -> bytes:
    """The body, refused as soon as it is known to exceed ``MAX_BODY_BYTES``: from its declared
    ``Content-Length``, or while it streams in; never buffered whole first (one request with a
    huge body would otherwise hold that much memory)."""
    too_big = InvalidInput(f"request body over {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def field(body: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    """``body[name]`` checked to be of ``kind`` (bool is not accepted as int)."""
    if name not in body or body[name] is None:
        if required:
            raise InvalidInput(f"field '{name}' is required")
        return None
    value = body[name]
    if kind is int and isinstance(value, bool):
        raise InvalidInput(f"field '{name}' must be an integer")
    if not isinstance(value, kind):
        raise InvalidInput(f"field '{name}' must be of type {kind.__name__}")
    return value


def query_int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"query parameter '{name}' must be an integer") from None
    if not low <= value <= high:
        raise InvalidInput(f"query parameter '{name}' must be from {low} to {high}")
    return value
