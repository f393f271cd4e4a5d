"""Fanout: from persisted messages to the processes holding the members' sockets (ADR 0007).

For each batch from the log: group by chat, read the chat's active members (one consistent
read per chat per batch: no cache to invalidate; 1:1 chats are the exception, their two members
are fixed when the chat is created and never change, so they are read once and kept in a
bounded cache), keep for each message the members who joined before it, look up where their
sockets are (Redis), and hand each process its deliveries: the local process directly, the
others over the hand-off channel. A member with no socket anywhere is offline and will catch up
by sync (decision 7: no pushes to dead sockets).

Local delivery needs no Redis (ADR 0033): this process's own sockets are served first, before
the route lookup, from every member the message is for (``LocalDelivery.deliver`` skips users
without a socket here). A failing lookup or hand-off then fails the batch as before (the
consumer retries it; a retry does not queue a message twice to a connection).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Collection, Sequence

import attrs

from messaging.domain.ids import check_chat_id, is_direct_chat_id
from messaging.domain.model import Message
from messaging.fanout.ports import Handoff
from messaging.metrics import Metrics
from messaging.protocol.delivery import Delivery, LocalDelivery, MembershipReader, RouteLookup
from messaging.protocol.faults import FaultPoint, FaultPoints, NoFaults

MEMBERSHIP_READS_IN_FLIGHT = 32
DIRECT_CHATS_CACHED = 100_000


@attrs.frozen
class Resolved:
    """A batch's messages by chat, with each chat's members and the sequence they joined at."""

    by_chat: dict[str, list[Message]]
    joined_by_chat: dict[str, dict[str, int]]

    @property
    def everyone(self) -> set[str]:
        return {user for joined in self.joined_by_chat.values() for user in joined}


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
        self._direct: OrderedDict[str, dict[str, int]] = OrderedDict()

    def _members_of_direct(self, chat_id: str) -> dict[str, int] | None:
        members = self._direct.get(chat_id)
        if members is not None:
            self._direct.move_to_end(chat_id)
        return members

    def _remember_direct(self, chat_id: str, members: dict[str, int]) -> None:
        if len(members) != 2:
            return  # not yet both memberships visible: never cache a partial answer
        self._direct[chat_id] = members
        if len(self._direct) > DIRECT_CHATS_CACHED:
            self._direct.popitem(last=False)

    @staticmethod
    def _plan(resolved: Resolved, users: Collection[str]) -> list[Delivery]:
        """Each message for those of ``users`` who joined its chat before it."""
        plan: list[Delivery] = []
        for chat_id, chat_messages in resolved.by_chat.items():
            joined = resolved.joined_by_chat[chat_id]
            for message in chat_messages:
                recipients = tuple(
                    sorted(u for u in users if u in joined and message.sequence > joined[u])
                )
                if recipients:
                    plan.append(Delivery(message, recipients))
        return plan

    async def fan_out(self, messages: Sequence[Message]) -> None:
        """Deliver ``messages`` to this process's sockets, then hand them to the processes
        holding the other members' sockets."""
        self._metrics.since_created(
            self._metrics.created_to_consumed, (m.created_at_ms for m in messages), self._clock()
        )
        resolved = await self.resolve(messages)
        self._faults.hit(FaultPoint.BEFORE_HANDOFF)
        self.deliver_locally(resolved)
        await self.hand_off(resolved)
        now_ms = self._clock() * 1000
        for message in messages:
            self._metrics.fanout_delivery_lag.observe(
                max(0.0, now_ms - message.created_at_ms) / 1000
            )

    async def resolve(self, messages: Sequence[Message]) -> Resolved:
        """Who each message is for: its chat's members who joined before it (the store)."""
        by_chat: dict[str, list[Message]] = defaultdict(list)
        for message in messages:
            # A record naming no possible chat can never be fanned out: a permanent
            # ``InvalidInput`` before anything is delivered, and the consumer parks it (ADR 0030).
            by_chat[check_chat_id(message.chat_id)].append(message)
        # The batch's chats are resolved concurrently (bounded) and all their members' routes
        # in one lookup: one round trip per batch, not two per chat.
        limit = asyncio.Semaphore(MEMBERSHIP_READS_IN_FLIGHT)

        async def members_of(chat_id: str) -> dict[str, int]:
            direct = is_direct_chat_id(chat_id)
            if direct and (cached := self._members_of_direct(chat_id)) is not None:
                return cached
            async with limit:
                memberships = await self._members.active_memberships(chat_id)
            members = {m.user_id: m.joined_seq for m in memberships}
            if direct:
                self._remember_direct(chat_id, members)
            return members

        joined_by_chat = dict(
            zip(by_chat, await asyncio.gather(*map(members_of, by_chat)), strict=True)
        )
        return Resolved(by_chat, joined_by_chat)

    def deliver_locally(self, resolved: Resolved) -> None:
        """To this process's sockets: needs no Redis (``LocalDelivery`` keeps the recipients
        with a socket here)."""
        self._local.deliver(self._plan(resolved, resolved.everyone))

    async def hand_off(self, resolved: Resolved) -> None:
        """To the other processes holding recipients' sockets (Redis: the route lookup and
        the hand-off); raises the adapters' errors."""
        where = await self._routes.lookup(resolved.everyone)
        for instance, users in where.items():
            if instance != self._instance_id:
                deliveries = self._plan(resolved, users)
                if deliveries:
                    await self._handoff.send(instance, deliveries)
