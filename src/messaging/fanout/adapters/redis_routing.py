"""Routing in Redis: which app process holds which user's sockets (ADR 0007).

``route:<user_id>`` is a sorted set of instance ids scored by expiry time (ms). Each process
re-announces its users every ``ttl/3``, so a dead process's entries expire within ``ttl``
(default 30 s) and lookups ignore expired scores at once. ``instance:<id>`` is this process's
liveness marker; finding it gone on a refresh means Redis lost its data (flush or restart), and
then every local connection is told to resync, since live pushes may have been missed meanwhile.

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
        self.duplicate_of: str | None = None
        """Set when another process was seen using this instance id (a misconfiguration that
        makes processes take each other's deliveries); readiness reports it."""

    def _expiry_ms(self) -> int:
        return int((self._clock() + self._ttl) * 1000)

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
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user in users:
                    pipe.zrangebyscore(route_key(user), now_ms, "+inf")
                answers = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"routing lookup failed: {exc!r}") from exc
        where: dict[str, set[str]] = {}
        for user, instances in zip(users, answers, strict=True):
            for instance in instances:
                name = instance.decode() if isinstance(instance, bytes) else str(instance)
                where.setdefault(name, set()).add(user)
        return where

    async def refresh_once(self) -> None:
        expiry = self._expiry_ms()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self._marker, self._token, ex=self._ttl, get=True)
                for user in self._users:
                    pipe.zadd(route_key(user), {self._instance: expiry})
                    pipe.expire(route_key(user), self._ttl * 2)
                answers = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"routing refresh failed: {exc!r}") from exc
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
            self._on_lost("routing_lost")

    name = "routing"

    async def check(self) -> None:
        """Readiness: not ready while another process uses this instance id."""
        if self.duplicate_of is not None:
            raise RuntimeError(f"instance id {self._instance} is used by another process too")

    async def run(self) -> None:
        """Refresh every ttl/3 until cancelled; Redis errors are logged and retried."""
        lost_connection = False
        while True:
            try:
                await self.refresh_once()
                if lost_connection:
                    lost_connection = False
                    self._on_lost("routing_lost")
            except Unavailable:
                if not lost_connection:
                    log.warning("Redis unavailable; routing refresh will retry")
                lost_connection = True
            await asyncio.sleep(max(0.5, self._ttl / 3))

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
