"""Pending OTPs and rate-limit counters in Redis (ephemeral by design).

Keys, under a namespace (the deployment's, so test sessions do not share counters):

- ``{ns}identity:otp:{phone}``: hash ``digest``, ``attempts``, ``expires_at``; TTL = the code's.
- ``{ns}identity:rate:{bucket}``: an integer counter; TTL = the rest of its window.

Each multi-step change is one Lua script, so it is atomic in Redis: a try is counted before the
code is compared and never recreates an expired code; a code is consumed by compare-and-delete.
If Redis forgets a key (restart, eviction), a user requests a new code, and a window's count
starts again: acceptable for limits whose job is to make guessing and SMS flooding expensive.
Redis errors become :class:`~messaging.domain.errors.Unavailable`.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from messaging.domain.errors import Unavailable
from messaging.identity.model import OtpChallenge, RateDecision


def otp_key(namespace: str, phone: str) -> str:
    return f"{namespace}identity:otp:{phone}"


def rate_key(namespace: str, bucket: str) -> str:
    return f"{namespace}identity:rate:{bucket}"


_PUT = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'digest', ARGV[1], 'attempts', ARGV[2], 'expires_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# Never HINCRBY a missing key: that would create a code-less hash without a TTL.
_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local fields = redis.call('HMGET', KEYS[1], 'digest', 'expires_at')
return {attempts, fields[1], fields[2]}
"""

_CONSUME = """
if redis.call('HGET', KEYS[1], 'digest') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# A fixed window that starts at the bucket's first hit; the key's TTL is the time left in it.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {count, redis.call('PTTL', KEYS[1])}
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


@asynccontextmanager
async def _translated(what: str) -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise Unavailable(f"Redis did not answer {what}: {exc}; retry later") from exc


class RedisOtpStore:
    """Implements ``identity.ports.OtpStore``."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        self._namespace = namespace
        self._put = redis.register_script(_PUT)
        self._attempt = redis.register_script(_ATTEMPT)
        self._consume = redis.register_script(_CONSUME)

    async def put(self, phone: str, challenge: OtpChallenge, ttl_seconds: float) -> None:
        async with _translated("storing a code"):
            await self._put(
                keys=[otp_key(self._namespace, phone)],
                args=[
                    challenge.digest,
                    challenge.attempts,
                    repr(challenge.expires_at),
                    _ms(ttl_seconds),
                ],
            )

    async def attempt(self, phone: str) -> OtpChallenge | None:
        async with _translated("counting a code try"):
            found = await self._attempt(keys=[otp_key(self._namespace, phone)])
        if found is None:
            return None
        attempts, digest, expires_at = found
        return OtpChallenge(
            digest=digest.decode(), attempts=int(attempts), expires_at=float(expires_at)
        )

    async def consume(self, phone: str, digest: str) -> bool:
        async with _translated("consuming a code"):
            deleted = await self._consume(keys=[otp_key(self._namespace, phone)], args=[digest])
        return int(deleted) == 1


class RedisRateLimiter:
    """Implements ``identity.ports.RateLimiter`` with fixed-window counters."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        self._namespace = namespace
        self._hit = redis.register_script(_HIT)

    async def hit(self, bucket: str, limit: int, window_seconds: float) -> RateDecision:
        async with _translated("counting a rate-limited request"):
            count, ttl_ms = await self._hit(
                keys=[rate_key(self._namespace, bucket)], args=[_ms(window_seconds)]
            )
        count = int(count)
        return RateDecision(
            allowed=count <= limit,
            count=count,
            retry_after_seconds=max(1, math.ceil(max(int(ttl_ms), 0) / 1000)),
        )
