"""Waiting in tests for a condition that in-process work makes true."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(
    predicate: Callable[[], bool], seconds: float = 5.0, *, step: float = 0.001
) -> None:
    """Return once ``predicate()`` holds, checking every ``step`` s; fail after about
    ``seconds`` (counted in checks, so a loaded machine's slow sleeps lengthen it)."""
    for _ in range(int(seconds / step)):
        if predicate():
            return
        await asyncio.sleep(step)
    raise AssertionError("the condition never held")
