"""Error answers the gateway's lanes share (docs/protocol.md, "error")."""

from __future__ import annotations

from messaging.connection.session import Connection
from messaging.domain.errors import MessagingError, RateLimited
from messaging.metrics import Metrics
from messaging.protocol import frames
from messaging.protocol.frames import ErrorCode

RETRY_AFTER_UNAVAILABLE_SECONDS = 1.0
"""``retry_after_ms`` of an answer that a dependency did not give in time (``unavailable``,
``store_unavailable``; ADR 0034) and of a command refused because too many are in flight."""


def domain_error(exc: MessagingError, ref: frames.ErrorRef) -> frames.Error:
    """The ``error`` frame for a domain error, answering what ``ref`` names; a retriable one
    says when to retry."""
    code = ErrorCode.of(exc.code)
    wait: int | None = None
    if isinstance(exc, RateLimited):
        wait = ms(exc.retry_after_seconds)
    elif code.retriable:
        wait = ms(RETRY_AFTER_UNAVAILABLE_SECONDS)
    return frames.error(code, exc.message, ref=ref, retry_after_ms=wait)


def rate_limited(
    connection: Connection,
    metrics: Metrics,
    limit: str,
    what: str,
    ref: frames.ErrorRef,
    wait: float,
) -> None:
    """Answer a frame refused by the ``limit`` token bucket, and count it (ADR 0010)."""
    metrics.limit_rejections.labels(limit).inc()
    connection.push_frame(
        frames.error(
            ErrorCode.RATE_LIMITED,
            f"too many {what}; retry later",
            ref=ref,
            retry_after_ms=ms(wait),
        )
    )


def ms(seconds: float) -> int:
    """A wait in whole milliseconds, at least 1."""
    return max(1, int(seconds * 1000 + 0.999))
