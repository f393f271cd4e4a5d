"""This process's connections, by user: the ``LocalDelivery`` the fanout plane hands to."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from messaging.connection.session import Connection
from messaging.metrics import Metrics
from messaging.protocol import frames
from messaging.protocol.delivery import Delivery


class LocalConnections:
    def __init__(self, metrics: Metrics) -> None:
        self._by_user: dict[str, set[Connection]] = defaultdict(set)
        self._metrics = metrics

    def add(self, connection: Connection) -> int:
        """Register; returns how many connections the user now has here."""
        self._by_user[connection.user_id].add(connection)
        self._metrics.connections.inc()
        return len(self._by_user[connection.user_id])

    def remove(self, connection: Connection) -> int:
        """Unregister; returns how many connections the user still has here."""
        connections = self._by_user.get(connection.user_id)
        if connections is None or connection not in connections:
            return len(connections or ())
        connections.discard(connection)
        self._metrics.connections.dec()
        if not connections:
            del self._by_user[connection.user_id]
            return 0
        return len(connections)

    def of_device(self, user_id: str, device_id: str) -> list[Connection]:
        """The user's open connections here from ``device_id``."""
        return [c for c in self._by_user.get(user_id, ()) if c.device_id == device_id]

    def all(self) -> list[Connection]:
        return [c for connections in self._by_user.values() for c in connections]

    def __len__(self) -> int:
        return sum(len(c) for c in self._by_user.values())

    def deliver(self, deliveries: Sequence[Delivery]) -> int:
        """Queue each message once on every local connection of each recipient."""
        queued = 0
        for delivery in deliveries:
            frame = frames.encode(frames.message(delivery.message))
            message = delivery.message
            for user in delivery.recipients:
                for connection in tuple(self._by_user.get(user, ())):
                    if connection.push(frame, "message"):
                        self._metrics.pushed_live(
                            connection.connection_id, message.chat_id, message.sequence
                        )
                        connection.saw(message.chat_id, message.sequence)
                        queued += 1
        self._metrics.fanout_deliveries.inc(queued)
        return queued

    def suggest_resync(self, reason: str) -> None:
        for connection in self.all():
            connection.push_frame(frames.resync(reason))
