"""``/healthz`` (the process is alive) and ``/readyz`` (every dependency answers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from messaging.protocol.health import HealthCheck

READY_TIMEOUT_SECONDS = 3.0


async def _run(check: HealthCheck) -> tuple[str, str | None]:
    try:
        await asyncio.wait_for(check.check(), READY_TIMEOUT_SECONDS)
    except Exception as exc:
        return check.name, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return check.name, None


def routes(
    checks: Callable[[Request], Sequence[HealthCheck]], instance_id: str = ""
) -> list[Route]:
    """``checks`` reads the running app's checks from the request (the lifespan state);
    ``instance_id`` names this process in ``/healthz`` (which worker or process answered)."""

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "alive", "instance": instance_id})

    async def readyz(request: Request) -> JSONResponse:
        results = await asyncio.gather(*(_run(check) for check in checks(request)))
        failing = [name for name, error in results if error is not None]
        body = {
            "status": "ready" if not failing else "unavailable",
            "failing": failing,
            "checks": {
                name: {"ok": error is None, **({"error": error} if error else {})}
                for name, error in results
            },
        }
        return JSONResponse(body, status_code=200 if not failing else 503)

    return [
        Route("/healthz", healthz, methods=["GET"], include_in_schema=False),
        Route("/readyz", readyz, methods=["GET"], include_in_schema=False),
    ]
