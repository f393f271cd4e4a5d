"""In-memory fakes of identity's ports (``messaging.identity.ports``), with a fake clock.

Each behaves as its real adapter does, and ``tests/contract/test_identity_ports.py`` checks both
against the same suite: TTLs expire by the clock, a try never recreates an expired code, a code is
consumed by compare-and-delete, and concurrent first logins of a phone get one user id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

from messaging.identity.model import OtpChallenge, RateDecision


class FakeClock:
    """Seconds since the epoch, moved only by ``advance``."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class InMemoryOtpStore:
    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._pending: dict[str, tuple[OtpChallenge, float]] = {}  # phone -> (challenge, dies)

    def _live(self, phone: str) -> OtpChallenge | None:
        entry = self._pending.get(phone)
        if entry is None:
            return None
        challenge, dies_at = entry
        if self._clock() >= dies_at:
            del self._pending[phone]
            return None
        return challenge

    async def put(self, phone: str, challenge: OtpChallenge, ttl_seconds: float) -> None:
        self._pending[phone] = (challenge, self._clock() + ttl_seconds)

    async def attempt(self, phone: str) -> OtpChallenge | None:
        challenge = self._live(phone)
        if challenge is None:
            return None
        counted = attrs.evolve(challenge, attempts=challenge.attempts + 1)
        self._pending[phone] = (counted, self._pending[phone][1])
        return counted

    async def consume(self, phone: str, digest: str) -> bool:
        challenge = self._live(phone)
        if challenge is None or challenge.digest != digest:
            return False
        del self._pending[phone]
        return True


class InMemoryRateLimiter:
    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[int, float]] = {}  # bucket -> (count, window ends)

    async def hit(self, bucket: str, limit: int, window_seconds: float) -> RateDecision:
        now = self._clock()
        count, ends = self._windows.get(bucket, (0, now + window_seconds))
        if now >= ends:
            count, ends = 0, now + window_seconds
        count += 1
        self._windows[bucket] = (count, ends)
        return RateDecision(
            allowed=count <= limit,
            count=count,
            retry_after_seconds=max(1, math.ceil(ends - now)),
        )


class RecordingSender:
    """An ``OtpSender`` and ``DevOtpInbox``: keeps every code sent, per phone."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send(self, phone: str, code: str, ttl_seconds: float) -> None:
        self.sent.append((phone, code))

    async def latest(self, phone: str) -> str | None:
        codes = [code for to, code in self.sent if to == phone]
        return codes[-1] if codes else None


class InMemoryUserDirectory:
    def __init__(self) -> None:
        self.by_phone: dict[str, str] = {}

    async def find(self, phone: str) -> str | None:
        return self.by_phone.get(phone)

    async def create(self, phone: str, user_id: str, created_at: float) -> str:
        return self.by_phone.setdefault(phone, user_id)

    async def missing(self, user_ids: Sequence[str]) -> set[str]:
        return set(user_ids) - set(self.by_phone.values())


class InMemoryDeviceSessions:
    def __init__(self) -> None:
        self.epochs: dict[tuple[str, str], int] = {}

    async def begin(self, user_id: str, device_id: str, now: float) -> int:
        epoch = self.epochs.get((user_id, device_id), 0) + 1
        self.epochs[(user_id, device_id)] = epoch
        return epoch

    async def current(self, user_id: str, device_id: str) -> int | None:
        return self.epochs.get((user_id, device_id))

    async def end(self, user_id: str, device_id: str, epoch: int) -> bool:
        if self.epochs.get((user_id, device_id)) != epoch:
            return False
        self.epochs[(user_id, device_id)] = epoch + 1
        return True
