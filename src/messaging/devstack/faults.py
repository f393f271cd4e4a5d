"""The faults an operator or a test injects into running processes, in one place: the scenario
harness (tests/scenarios/harness.py) and the lab console (``messaging lab``) both call these, so
that every fault the console offers is one the scenario tests inject, through the same code.

- :func:`sigkill`: a crash (SIGKILL, no cleanup) of one process the caller started;
- :func:`arm_fault_point`: ``POST /v1/test/faults`` on an app process started with
  ``MESSAGING_FAULT_HOOKS=true`` (ADR 0019): it SIGKILLs itself at that point;
- :func:`flush_redis`: ``FLUSHALL`` of one Redis (the routing table and every cache gone);
- stopping and starting a stack service: :func:`messaging.devstack.stack.stop_service` and
  :func:`~messaging.devstack.stack.start_service`;
- network paths: :class:`messaging.devstack.toxiproxy.Toxiproxy`.
"""

from __future__ import annotations

import signal
import subprocess

import httpx
from redis.asyncio import Redis


class FaultError(RuntimeError):
    pass


def sigkill(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL one process (by its own handle, never by name) and reap it."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


async def arm_fault_point(base_url: str, point: str) -> list[str]:
    """Arm ``point`` in the app process at ``base_url``; returns the points armed there."""
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        answer = await http.post(base_url + "/v1/test/faults", json={"point": point})
    if answer.status_code != 200:
        raise FaultError(f"arming {point!r} at {base_url}: {answer.status_code} {answer.text}")
    armed = answer.json().get("armed", [])
    return [str(p) for p in armed]


async def flush_redis(redis_url: str) -> None:
    """``FLUSHALL``: every key of every database of that Redis."""
    async with Redis.from_url(redis_url) as redis:
        await redis.flushall()
