"""Test-only fault injection: ``POST /v1/test/faults {"point": "after_persist"}`` arms a fault
point; the next time the code passes it, the process kills itself with SIGKILL (no cleanup, no
flush: a real crash). Mounted only with ``MESSAGING_FAULT_HOOKS=true``, which production refuses
(``settings.validate``)."""

from __future__ import annotations

import logging
import os
import signal

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from messaging.domain.errors import InvalidInput
from messaging.protocol.faults import FaultPoint
from messaging.web.requests import field, json_object

log = logging.getLogger(__name__)


class ProcessFaults:
    def __init__(self) -> None:
        self.armed: set[FaultPoint] = set()

    def hit(self, point: FaultPoint) -> None:
        if point in self.armed:
            log.critical("fault point %s reached: SIGKILL", point.value)
            os.kill(os.getpid(), signal.SIGKILL)


def routes(faults: ProcessFaults) -> list[Route]:
    async def arm(request: Request) -> JSONResponse:
        body = await json_object(request)
        name = field(body, "point", str)
        try:
            point = FaultPoint(name)
        except ValueError:
            raise InvalidInput(f"unknown fault point {name!r}") from None
        faults.armed.add(point)
        return JSONResponse({"armed": sorted(p.value for p in faults.armed)})

    return [Route("/v1/test/faults", arm, methods=["POST"], include_in_schema=False)]
