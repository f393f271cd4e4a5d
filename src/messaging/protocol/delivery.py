"""How the planes meet on the delivery path.

durability --(MembershipReader)--> fanout --(LocalDelivery)--> connection
connection --(RouteRegistry)--> routing (Redis, owned by fanout's adapters)
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

import attrs

from messaging.domain.model import Membership, Message


@attrs.frozen
class Delivery:
    """One message for some users, all of whose sockets are on one process."""

    message: Message
    recipients: tuple[str, ...]


class MembershipReader(Protocol):
    async def active_memberships(self, chat_id: str) -> list[Membership]: ...


class LocalDelivery(Protocol):
    """The sockets of this process. ``deliver`` queues the message on every local connection of
    each recipient and never blocks (a full queue disconnects that slow consumer)."""

    def deliver(self, deliveries: Sequence[Delivery]) -> int: ...

    def suggest_resync(self, reason: str) -> None:
        """Tell every local connection it may have missed live messages (it should sync)."""
        ...


class RouteRegistry(Protocol):
    """Where users' sockets are. Ephemeral: losing it loses no message, only immediacy."""

    async def announce(self, user_id: str) -> None: ...

    async def withdraw(self, user_id: str) -> None: ...


class RouteLookup(Protocol):
    async def lookup(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        """instance id -> the given users with a socket there."""
        ...
