"""HTTP guards around every route: security headers and the per-address request limit.

Both are plain ASGI middleware (docs/adr/0010-abuse-limits-and-origin-checks.md):

- :class:`SecurityHeaders` gives every HTTP answer ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer``, ``X-Frame-Options: DENY`` and a Content-Security-Policy
  that allows nothing and no framing (the demo page sets its own, stricter-for-a-page policy,
  which is kept); API answers under ``/v1`` are ``Cache-Control: no-store`` (they carry tokens
  and messages).
- :class:`AddressRateLimit` answers ``429`` with ``Retry-After`` and the usual error body when a
  client address exceeds its token bucket. Probes (``/healthz``, ``/readyz``, ``/metrics``) are
  exempt: an orchestrator must always reach them.

The client address is the socket peer, or the ``X-Forwarded-For`` address when the peer is a
trusted proxy (uvicorn's ``forwarded_allow_ips``, ``MESSAGING_FORWARDED_ALLOW_IPS``).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from messaging.domain.limits import KeyedBuckets, retry_after_seconds
from messaging.web.errors import error_body

API_CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'"
DEFAULT_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": API_CONTENT_SECURITY_POLICY,
    "Cross-Origin-Resource-Policy": "same-origin",
}
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        api = str(scope.get("path", "")).startswith("/v1/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in DEFAULT_HEADERS.items():
                    headers.setdefault(name, value)
                if api:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self._app(scope, receive, send_with_headers)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class AddressRateLimit:
    def __init__(
        self, app: ASGIApp, *, buckets: KeyedBuckets, on_reject: Callable[[], None]
    ) -> None:
        self._app = app
        self._buckets = buckets
        self._on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in PROBE_PATHS:
            await self._app(scope, receive, send)
            return
        wait = self._buckets.take(client_address(scope))
        if wait <= 0:
            await self._app(scope, receive, send)
            return
        self._on_reject()
        seconds = retry_after_seconds(wait)
        response = JSONResponse(
            error_body(
                "rate_limited",
                f"too many requests from your address; retry in {seconds} s",
                retriable=True,
            ),
            status_code=429,
            headers={"Retry-After": str(seconds)},
        )
        await response(scope, receive, send)
