"""The browser demo page: ``/`` (index.html) and ``/static/*`` (its script and style sheet).

Plain files in the package (``messaging/web/static``), no build step and nothing loaded from
another origin. Every answer carries a strict Content-Security-Policy: scripts and styles only
from this origin (no inline code, no ``eval``), WebSockets to this host, and no framing. The page
shows user text with ``textContent`` only; the policy is the second line of defence.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate every time (ETag / Last-Modified): a changed page is never served stale.
    "Cache-Control": "no-cache",
}
PACKAGE = "messaging.web"
STATIC_DIR = "static"


class _StaticFiles(StaticFiles):
    """Static files with the page's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def routes() -> list[Route | Mount]:
    """``GET /`` (the page) and ``/static`` (its files); neither is in the OpenAPI document."""
    index = (resources.files(PACKAGE) / STATIC_DIR / "index.html").read_bytes()

    async def page(_: Request) -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    return [
        Route("/", page, methods=["GET"], include_in_schema=False),
        Mount("/static", app=_StaticFiles(packages=[(PACKAGE, STATIC_DIR)]), name="static"),
    ]


def lab_routes() -> list[Route]:
    """``GET /lab``: where the lab console is (``messaging lab``, its own process; ADR 0032).
    The composition root mounts it only outside production, where the fault hooks are allowed:
    with ``MESSAGING_ENV=production`` ``/lab`` answers 404 like any unknown path."""
    pointer = (resources.files(PACKAGE) / STATIC_DIR / "lab.html").read_bytes()

    async def lab(_: Request) -> Response:
        return Response(pointer, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    return [Route("/lab", lab, methods=["GET"], include_in_schema=False)]
