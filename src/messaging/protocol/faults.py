"""Fault points: named places in the code where a test can make the process fail.

Production wiring passes :class:`NoFaults`. Only with ``MESSAGING_FAULT_HOOKS=true`` (refused
when ``MESSAGING_ENV=production``) does the composition root pass an armable implementation.
"""

from __future__ import annotations

import enum
from typing import Protocol


class FaultPoint(enum.StrEnum):
    AFTER_PERSIST = "after_persist"
    """The message is durable, the outbox entry written, nothing published or acknowledged."""
    BEFORE_HANDOFF = "before_handoff"
    """Fanout consumed a Kafka batch and is about to hand it to the sockets' processes."""


class FaultPoints(Protocol):
    def hit(self, point: FaultPoint) -> None: ...


class NoFaults:
    def hit(self, point: FaultPoint) -> None:
        return None
