"""OTP senders: ``dev`` (logs the code and keeps it for ``GET /v1/dev/otp``) and ``log-only``.

``log-only`` is the seam where an SMS provider goes: it records that a code was sent, never the
code. ``dev`` exposes codes over HTTP and is refused in production by the settings validation.
The dev inbox lives in Redis, so every app process can serve a code another one sent.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from messaging.domain.errors import Unavailable
from messaging.domain.phone import mask_phone

log = logging.getLogger(__name__)


def dev_inbox_key(namespace: str, phone: str) -> str:
    return f"{namespace}identity:dev-otp:{phone}"


class LogOnlySender:
    """Implements ``identity.ports.OtpSender``: logs that a code was sent, without the code."""

    async def send(self, phone: str, code: str, ttl_seconds: float) -> None:
        log.info("OTP sent to %s (valid %gs; code not logged)", mask_phone(phone), ttl_seconds)


class DevOtpSender:
    """Implements ``OtpSender`` and ``DevOtpInbox``. Development only."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        self._redis = redis
        self._namespace = namespace

    async def send(self, phone: str, code: str, ttl_seconds: float) -> None:
        log.warning("DEV OTP for %s: %s (dev sender; never in production)", phone, code)
        try:
            await self._redis.set(
                dev_inbox_key(self._namespace, phone), code, px=max(1, int(ttl_seconds * 1000))
            )
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis did not answer keeping a dev code: {exc}") from exc

    async def latest(self, phone: str) -> str | None:
        try:
            code = await self._redis.get(dev_inbox_key(self._namespace, phone))
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis did not answer reading a dev code: {exc}") from exc
        if code is None:
            return None
        return code.decode() if isinstance(code, bytes) else str(code)
