"""``/healthz`` (the process is alive) and ``/readyz`` (it can serve: ADR 0033).

``/readyz`` runs every check (each bounded by :data:`READY_TIMEOUT_SECONDS`). A failing critical
check (the store, Redis, a dead background loop) makes it 503 ``unavailable`` with the check
under ``failing``; a failing non-critical one (Kafka, the fanout consumer: freshness, not the
ability to serve) leaves it 200 with status ``degraded`` and the check under ``degraded``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from messaging.protocol.health import HealthCheck, is_critical

READY_TIMEOUT_SECONDS = 3.0


async def _run(check: HealthCheck) -> tuple[str, str | None, bool]:
    critical = is_critical(check)
    try:
        await asyncio.wait_for(check.check(), READY_TIMEOUT_SECONDS)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return check.name, error, critical
    return check.name, None, critical


def routes(
    checks: Callable[[Request], Sequence[HealthCheck]], instance_id: str = ""
) -> list[Route]:
    """``checks`` reads the running app's checks from the request (the lifespan state);
    ``instance_id`` names this process in ``/healthz`` (which worker or process answered)."""

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "alive", "instance": instance_id})

    async def readyz(request: Request) -> JSONResponse:
        results = await asyncio.gather(*(_run(check) for check in checks(request)))
        failing = [name for name, error, critical in results if error is not None and critical]
        degraded = [name for name, error, critical in results if error and not critical]
        status = "unavailable" if failing else "degraded" if degraded else "ready"
        body = {
            "status": status,
            "failing": failing,
            "degraded": degraded,
            "checks": {
                name: {"ok": error is None, **({"error": error} if error else {})}
                for name, error, _ in results
            },
        }
        return JSONResponse(body, status_code=200 if not failing else 503)

    return [
        Route("/healthz", healthz, methods=["GET"], include_in_schema=False),
        Route("/readyz", readyz, methods=["GET"], include_in_schema=False),
    ]
