"""One mapping from domain errors to HTTP answers, for every REST route.

The body is always ``{"error": {"code", "message", "retriable"}}``; a rate-limited answer also
carries ``Retry-After``. Anything unexpected becomes a 500 with no internals in the body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from messaging.domain import errors

log = logging.getLogger(__name__)

STATUS: list[tuple[type[errors.MessagingError], int]] = [
    (errors.InvalidInput, 422),
    (errors.Unauthenticated, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.RateLimited, 429),
    (errors.Unavailable, 503),
]


def error_body(code: str, message: str, *, retriable: bool = False) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "retriable": retriable}}


def status_for(exc: errors.MessagingError) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


async def messaging_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.MessagingError)
    return error_response(exc)


def error_response(exc: errors.MessagingError) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, errors.RateLimited):
        headers["Retry-After"] = str(max(1, exc.retry_after_seconds))
    if isinstance(exc, errors.Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="messaging"'
    return JSONResponse(
        error_body(exc.code, exc.message, retriable=exc.retriable),
        status_code=status_for(exc),
        headers=headers,
    )


async def http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)


Handler = Callable[[Request, Exception], Awaitable[Response]]


def handlers(on_limit: Callable[[str], None] = lambda _: None) -> dict[type[Exception], Handler]:
    """The app's exception handlers; ``on_limit`` counts answers refused by a size or count
    limit (:class:`~messaging.domain.errors.LimitExceeded`, by its ``limit`` name)."""

    async def messaging_error_counted(request: Request, exc: Exception) -> Response:
        if isinstance(exc, errors.LimitExceeded):
            on_limit(exc.limit)
        return await messaging_error(request, exc)

    return {
        errors.MessagingError: messaging_error_counted,
        HTTPException: http_error,
        Exception: unexpected_error,
    }
