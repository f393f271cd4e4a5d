"""Routing in Redis: which app process holds which user's sockets (ADR 0007).

``route:<user_id>`` is a sorted set of instance ids scored by expiry time (ms). Each process
re-announces its users every ``ttl/3``, so a dead process's entries expire within ``ttl``
(default 30 s) and lookups ignore expired scores at once. ``instance:<id>`` is this process's
liveness marker; finding it gone on a refresh means Redis lost its data (flush or restart), and
then every local connection is told to resync, since live pushes may have been missed meanwhile.

Routing degraded (ADR 0033): while a refresh or lookup fails, or one has been in flight for more
than :data:`STALLED_SECONDS`, ``degraded`` says so (the direct fanout path then serves this
process's own sockets whatever its consumer does). Whatever this process's clients may have
missed meanwhile is followed by a resync (``on_lost``): after a failed or stalled call, after
a refresh that came later than the expiry the previous one wrote (the entries lapsed: other
processes stopped handing off here), and after Redis lost the state. ``on_lost`` is told only
by a *fresh* refresh, one quick enough that the expiry it wrote outlasts the next refresh: a
refresh retried through an outage writes an expiry computed before it, possibly already past,
and a resync sent then would precede the hand-offs lost until the next refresh.

Nothing here is authoritative: flushing Redis loses no message. Redis errors leave this module
as the domain's retriable ``Unavailable`` (ADR 0022).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection

from redis.asyncio import Redis
from redis.exceptions import RedisError

from messaging.domain.errors import Unavailable

log = logging.getLogger(__name__)

STALLED_SECONDS = 1.0
"""A routing call (refresh or lookup) in flight for longer counts as degraded."""
RETRY_SECONDS = 0.5
"""The refresh's pace while a lapse waits for its resync."""
LAPSE_MARGIN_SECONDS = 1.0
"""A refresh completing later than this before the previous write's expiry counts as lapsed:
a lookup elsewhere may already have missed this process (clock skew, a lookup in flight)."""


def route_key(user_id: str) -> str:
    return f"route:{user_id}"


class RedisRoutes:
    def __init__(
        self,
        redis: Redis,
        instance_id: str,
        *,
        ttl_seconds: int,
        on_lost: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._instance = instance_id
        self._ttl = ttl_seconds
        self._on_lost = on_lost
        self._clock = clock
        self._users: Counter[str] = Counter()
        self._marker = f"instance:{instance_id}"
        self._token = uuid.uuid4().hex
        self._written = False
        self._calls: dict[int, float] = {}
        """Routing calls in flight: a token -> when it started."""
        self._next_call = 0
        self._refresh_failing = False
        self._lookup_failing = False
        self._valid_until: float | None = None
        """The expiry (s) of this process's entries as the last successful refresh wrote it."""
        self._lapsed: str | None = None
        """Why this process's clients may have missed hand-offs since the last resync."""
        self.duplicate_of: str | None = None
        """Set when another process was seen using this instance id (a misconfiguration that
        makes processes take each other's deliveries); readiness reports it."""

    def _expiry_ms(self) -> int:
        return int((self._clock() + self._ttl) * 1000)

    @property
    def degraded(self) -> bool:
        """Routing fails or stalls: a refresh or lookup failed last, or one has been in flight
        for more than :data:`STALLED_SECONDS`."""
        if self._refresh_failing or self._lookup_failing:
            return True
        now = self._clock()
        return any(now - since > STALLED_SECONDS for since in self._calls.values())

    def _started(self) -> int:
        token = self._next_call
        self._next_call += 1
        self._calls[token] = self._clock()
        return token

    def _ended(self, token: int) -> None:
        """A call ends; one that stalled means hand-offs here may have been lost."""
        since = self._calls.pop(token)
        if self._clock() - since > STALLED_SECONDS:
            self._lapse("routing_stalled")

    def _lapse(self, reason: str) -> None:
        if self._lapsed is None:
            self._lapsed = reason

    async def announce(self, user_id: str) -> None:
        self._users[user_id] += 1
        if self._users[user_id] > 1:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zadd(route_key(user_id), {self._instance: self._expiry_ms()})
                pipe.expire(route_key(user_id), self._ttl * 2)
                await pipe.execute()
        except (RedisError, OSError):
            log.warning("announcing %s failed; the next refresh retries", user_id)

    async def withdraw(self, user_id: str) -> None:
        self._users[user_id] -= 1
        if self._users[user_id] > 0:
            return
        del self._users[user_id]
        try:
            await self._redis.zrem(route_key(user_id), self._instance)
        except (RedisError, OSError):
            log.warning("withdrawing %s failed; the entry expires by itself", user_id)

    async def lookup(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        users = list(user_ids)
        now_ms = int(self._clock() * 1000)
        token = self._started()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user in users:
                    pipe.zrangebyscore(route_key(user), now_ms, "+inf")
                answers = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._lookup_failing = True
            self._lapse("routing_failed")
            raise Unavailable(f"routing lookup failed: {exc!r}") from exc
        finally:
            self._ended(token)
        self._lookup_failing = False
        where: dict[str, set[str]] = {}
        for user, instances in zip(users, answers, strict=True):
            for instance in instances:
                name = instance.decode() if isinstance(instance, bytes) else str(instance)
                where.setdefault(name, set()).add(user)
        return where

    async def refresh_once(self) -> None:
        """Re-announce every local user; tell ``on_lost`` once a fresh write ends a lapse."""
        expiry = self._expiry_ms()
        token = self._started()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self._marker, self._token, ex=self._ttl, get=True)
                for user in self._users:
                    pipe.zadd(route_key(user), {self._instance: expiry})
                    pipe.expire(route_key(user), self._ttl * 2)
                answers = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._refresh_failing = True
            self._lapse("routing_failed")
            raise Unavailable(f"routing refresh failed: {exc!r}") from exc
        finally:
            self._ended(token)
        self._refresh_failing = self._lookup_failing = False  # Redis answers again
        now = self._clock()
        if self._valid_until is not None and now > self._valid_until - LAPSE_MARGIN_SECONDS:
            self._lapse("routing_lapsed")
        self._valid_until = expiry / 1000
        previous = answers[0]
        first_write, self._written = not self._written, True
        if previous is not None and previous.decode() != self._token:
            if first_write:
                # A predecessor's key that outlived it (restarted after a crash, same instance
                # id, within the ttl) or a live twin: a twin overwrites our token before our next
                # refresh, a dead predecessor does not.
                log.info("instance id %s was in use until recently", self._instance)
            else:
                if self.duplicate_of is None:
                    log.error(
                        "another process uses instance id %s: deliveries will be lost",
                        self._instance,
                    )
                self.duplicate_of = previous.decode()
        if previous is None and self._users:
            log.warning("routing state was lost (Redis flushed or restarted); re-announced")
            self._lapse("routing_lost")
        if self._lapsed is None:
            return
        if self.fresh:
            reason, self._lapsed = self._lapsed, None
            log.info("routing back after %s: local connections are told to resync", reason)
            self._on_lost("routing_lost")
        else:
            log.info(
                "routing refresh came too late to be fresh (%s); refreshing again", self._lapsed
            )

    @property
    def fresh(self) -> bool:
        """The last write outlasts the next refresh (due ttl/3 from now) by the lapse margin."""
        if self._valid_until is None:
            return False
        left = self._valid_until - self._clock()
        return left > self._interval + LAPSE_MARGIN_SECONDS

    @property
    def _interval(self) -> float:
        return max(0.5, self._ttl / 3)

    @property
    def lapsed(self) -> bool:
        """Hand-offs here may have been missed and no resync has followed yet."""
        return self._lapsed is not None

    name = "routing"

    async def check(self) -> None:
        """Readiness: not ready while another process uses this instance id."""
        if self.duplicate_of is not None:
            raise RuntimeError(f"instance id {self._instance} is used by another process too")

    async def run(self) -> None:
        """Refresh every ttl/3 until cancelled; Redis errors are logged and retried. While a
        lapse waits for its resync (a refresh failed, or the last one was not fresh), the next
        refresh comes after :data:`RETRY_SECONDS` instead."""
        failing = False
        while True:
            try:
                await self.refresh_once()
                failing = False
            except Unavailable:
                if not failing:
                    log.warning("Redis unavailable; routing refresh will retry")
                failing = True
            await asyncio.sleep(
                min(RETRY_SECONDS, self._interval) if self.lapsed else self._interval
            )

    async def clear(self) -> None:
        """Graceful shutdown: remove this process from every route it announced."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user in self._users:
                    pipe.zrem(route_key(user), self._instance)
                pipe.delete(self._marker)
                await pipe.execute()
        except (RedisError, OSError):
            log.warning("could not clear routes on shutdown; they expire by themselves")
        self._users.clear()
