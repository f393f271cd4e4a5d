"""What the identity service needs from the outside world, as narrow ``typing.Protocol`` ports.

Adapters (``identity/adapters``) implement them over Redis and DynamoDB; ``tests/fakes/identity``
implements them in memory; ``tests/contract/test_identity_ports.py`` runs one suite against both.
Every method raises only domain errors (``Unavailable`` when the backing store does not answer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from messaging.identity.model import OtpChallenge, RateDecision

Clock = Callable[[], float]
"""Seconds since the epoch (``time.time`` in production, a fake in tests)."""


class OtpStore(Protocol):
    """Pending codes, one per phone. Ephemeral: losing one only means requesting a new code."""

    async def put(self, phone: str, challenge: OtpChallenge, ttl_seconds: float) -> None:
        """Replace any pending code for ``phone`` (its tries start again from the challenge's)."""
        ...

    async def attempt(self, phone: str) -> OtpChallenge | None:
        """Atomically count one try and return the challenge with the new count, or ``None``
        when no code is pending (it never creates one)."""
        ...

    async def consume(self, phone: str, digest: str) -> bool:
        """Delete the pending code if it is still the one with ``digest``. True for exactly one
        of several concurrent callers; False when it was already used, burned or replaced."""
        ...


class RateLimiter(Protocol):
    """Counters per bucket in fixed windows that start at a bucket's first hit."""

    async def hit(self, bucket: str, limit: int, window_seconds: float) -> RateDecision:
        """Count one hit on ``bucket``; allowed while the window's count is within ``limit``."""
        ...


class OtpSender(Protocol):
    """Delivers a code to a phone (an SMS provider in a real deployment)."""

    async def send(self, phone: str, code: str, ttl_seconds: float) -> None: ...


class DevOtpInbox(Protocol):
    """Development only: the last code sent to a phone, to log in without an SMS provider."""

    async def latest(self, phone: str) -> str | None: ...


class UserDirectory(Protocol):
    """Phone number -> user id, created on a phone's first login."""

    async def find(self, phone: str) -> str | None: ...

    async def create(self, phone: str, user_id: str, created_at: float) -> str:
        """Register ``phone`` as ``user_id`` unless it has a user already; returns the phone's
        user id either way (so concurrent first logins of one phone all get the same one)."""
        ...

    async def missing(self, user_ids: Sequence[str]) -> set[str]:
        """Those of ``user_ids`` that are not registered users."""
        ...


class DeviceSessions(Protocol):
    """Each (user, device)'s session epoch: a login starts a new one, a logout ends it."""

    async def begin(self, user_id: str, device_id: str, now: float) -> int:
        """Start a new session on the device; returns its epoch (1 for a first login)."""
        ...

    async def current(self, user_id: str, device_id: str) -> int | None:
        """The device's current epoch; ``None`` if the device never logged in."""
        ...

    async def end(self, user_id: str, device_id: str, epoch: int) -> bool:
        """End session ``epoch`` if it is still the current one; False when it already ended."""
        ...
