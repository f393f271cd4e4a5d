"""Readiness checks: one per external dependency."""

from __future__ import annotations

from typing import Protocol


class HealthCheck(Protocol):
    """Answers whether one dependency is reachable; raises with a reason when it is not.

    A check may also have a ``critical`` attribute (default True, read with :func:`is_critical`):
    a failing critical check makes the process unready (``/readyz`` 503: it cannot serve); a
    failing non-critical one only degraded (200 with the check named under ``degraded``: it
    serves, less fresh), ADR 0033."""

    @property
    def name(self) -> str: ...

    async def check(self) -> None: ...


def is_critical(check: HealthCheck) -> bool:
    return bool(getattr(check, "critical", True))
