"""Readiness checks: one per external dependency."""

from __future__ import annotations

from typing import Protocol


class HealthCheck(Protocol):
    """Answers whether one dependency is reachable; raises with a reason when it is not."""

    @property
    def name(self) -> str: ...

    async def check(self) -> None: ...
