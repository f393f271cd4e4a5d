"""Fanout: from persisted messages to the processes holding the members' sockets (ADR 0007).

For each batch from the log: group by chat, read the chat's active members (one consistent
read per chat per batch: no cache to invalidate), keep for each message the members who joined
before it, look up where their sockets are (Redis), and hand each process its deliveries: the
local process directly, the others over the hand-off channel. A member with no socket anywhere
is offline and will catch up by sync (decision 7: no pushes to dead sockets).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from messaging.domain.model import Message
from messaging.fanout.ports import Handoff
from messaging.metrics import Metrics
from messaging.protocol.delivery import Delivery, LocalDelivery, MembershipReader, RouteLookup
from messaging.protocol.faults import FaultPoint, FaultPoints, NoFaults

MEMBERSHIP_READS_IN_FLIGHT = 32


class FanoutService:
    def __init__(
        self,
        members: MembershipReader,
        routes: RouteLookup,
        handoff: Handoff,
        local: LocalDelivery,
        *,
        instance_id: str,
        metrics: Metrics,
        faults: FaultPoints | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._members = members
        self._routes = routes
        self._handoff = handoff
        self._local = local
        self._instance_id = instance_id
        self._metrics = metrics
        self._faults: FaultPoints = faults or NoFaults()
        self._clock = clock

    async def fan_out(self, messages: Sequence[Message]) -> None:
        by_chat: dict[str, list[Message]] = defaultdict(list)
        for message in messages:
            by_chat[message.chat_id].append(message)
        # The batch's chats are resolved concurrently (bounded) and all their members' routes
        # in one lookup: one round trip per batch, not two per chat.
        limit = asyncio.Semaphore(MEMBERSHIP_READS_IN_FLIGHT)

        async def members_of(chat_id: str) -> dict[str, int]:
            async with limit:
                memberships = await self._members.active_memberships(chat_id)
            return {m.user_id: m.joined_seq for m in memberships}

        joined_by_chat = dict(
            zip(by_chat, await asyncio.gather(*map(members_of, by_chat)), strict=True)
        )
        where = await self._routes.lookup(
            {user for joined in joined_by_chat.values() for user in joined}
        )
        plan: dict[str, list[Delivery]] = defaultdict(list)
        for chat_id, chat_messages in by_chat.items():
            joined = joined_by_chat[chat_id]
            for instance, users in where.items():
                for message in chat_messages:
                    recipients = tuple(
                        sorted(u for u in users if u in joined and message.sequence > joined[u])
                    )
                    if recipients:
                        plan[instance].append(Delivery(message, recipients))
        self._faults.hit(FaultPoint.BEFORE_HANDOFF)
        for instance, deliveries in plan.items():
            if instance == self._instance_id:
                self._local.deliver(deliveries)
            else:
                await self._handoff.send(instance, deliveries)
        now_ms = self._clock() * 1000
        for message in messages:
            self._metrics.fanout_delivery_lag.observe(
                max(0.0, now_ms - message.created_at_ms) / 1000
            )
