"""Hand-off between app processes over Redis pub/sub: one channel per process.

Redis pub/sub is at-most-once: if the receiving process is down or briefly disconnected, the
deliveries are lost for real time, and its clients catch up by sync (their gap detection, a
``resync`` hint sent after the subscriber reconnects, or their reconnect). The Kafka offset is
committed once ``PUBLISH`` returned: the hand-off is done, the durable copy is in the database.
A Redis error on ``send`` is raised as the domain's retriable ``Unavailable`` (ADR 0022).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from messaging.domain.errors import Unavailable
from messaging.protocol.delivery import Delivery, LocalDelivery
from messaging.protocol.handoff import HandoffError, decode_handoff, encode_handoff

log = logging.getLogger(__name__)


def channel(instance_id: str) -> str:
    return f"deliver:{instance_id}"


class RedisHandoff:
    def __init__(self, redis: Redis, instance_id: str) -> None:
        self._redis = redis
        self._instance = instance_id
        self._subscribed = asyncio.Event()
        self._resubscribe = asyncio.Event()

    def resubscribe(self) -> None:
        """Drop the subscription's connection and subscribe again on a fresh one (then local
        connections are told to resync). Called when Redis answers again after an outage: a
        connection that lived through a blackhole may have lost part of the byte stream, and
        a reply parser left mid-frame would swallow later hand-offs silently (ADR 0033)."""
        self._resubscribe.set()

    async def send(self, instance_id: str, deliveries: Sequence[Delivery]) -> None:
        try:
            await self._redis.publish(channel(instance_id), encode_handoff(deliveries))
        except (RedisError, OSError) as exc:
            raise Unavailable(f"hand-off to {instance_id} failed: {exc!r}") from exc

    async def subscribed(self) -> None:
        await self._subscribed.wait()

    async def run_subscriber(self, local: LocalDelivery) -> None:
        """Deliver what other processes hand to this one, until cancelled. After a lost
        subscription, local connections are told to resync (hand-offs may have been missed)."""
        first = True
        renew = False
        while True:
            if renew or self._resubscribe.is_set():
                # Every pooled connection may have lived through the outage: none is reused
                # (a dead one would take the new SUBSCRIBE without a word). A request that came
                # while the last attempt was failing counts too: cleared only here, when acted on.
                self._resubscribe.clear()
                await self._redis.connection_pool.disconnect()
            renew = False
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel(self._instance))
                self._subscribed.set()
                if not first:
                    local.suggest_resync("handoff_reconnected")
                first = False
                listening = asyncio.create_task(self._listen(pubsub, local))
                asked = asyncio.create_task(self._resubscribe.wait())
                try:
                    await asyncio.wait({listening, asked}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (listening, asked):
                        task.cancel()
                    await asyncio.gather(listening, asked, return_exceptions=True)
                if not listening.cancelled() and (error := listening.exception()) is not None:
                    raise error
                self._subscribed.clear()
                renew = True
                log.info("resubscribing to hand-offs on a fresh connection")
            except (RedisError, OSError):
                self._subscribed.clear()
                log.warning("hand-off subscription lost; resubscribing")
                await asyncio.sleep(0.5)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    @staticmethod
    async def _listen(pubsub: PubSub, local: LocalDelivery) -> None:
        async for item in pubsub.listen():
            if item.get("type") != "message":
                continue
            try:
                local.deliver(decode_handoff(item["data"]))
            except HandoffError:
                log.error("dropping an undecodable hand-off payload")
