"""This process's connections, by user: the ``LocalDelivery`` the fanout plane hands to.

A message can reach this process more than once: the direct path beside the log and then the log
itself after an outage (ADR 0033), a batch retried after a failed hand-off, the outbox sweeper's
republish. ``deliver`` remembers, for the last :data:`RECENT_MESSAGES` messages it queued (or a
sync replayed: ``replayed``), which connections were sent each, and does not queue the same
message to the same connection twice (clients drop duplicates by sequence anyway: this only
saves the frames).
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Sequence

from messaging.connection.session import Connection
from messaging.metrics import Metrics
from messaging.protocol import frames
from messaging.protocol.delivery import Delivery

RECENT_MESSAGES = 50_000
"""How many recently queued messages ``deliver`` remembers the connections of."""


class LocalConnections:
    def __init__(self, metrics: Metrics) -> None:
        self._by_user: dict[str, set[Connection]] = defaultdict(set)
        self._metrics = metrics
        self._recent: OrderedDict[tuple[str, int], set[str]] = OrderedDict()

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
            message = delivery.message
            frame: bytes | None = None
            sent_to = self._sent_to(message.chat_id, message.sequence)
            for user in delivery.recipients:
                for connection in tuple(self._by_user.get(user, ())):
                    if connection.connection_id in sent_to:
                        self._metrics.fanout_duplicates_skipped.inc()
                        continue
                    if frame is None:
                        frame = frames.encode(frames.message(message))
                    if connection.push(frame, "message"):
                        sent_to.add(connection.connection_id)
                        self._metrics.pushed_live(
                            connection.connection_id, message.chat_id, message.sequence
                        )
                        connection.saw(message.chat_id, message.sequence)
                        queued += 1
        self._metrics.fanout_deliveries.inc(queued)
        return queued

    def replayed(self, connection: Connection, chat_id: str, sequence: int) -> None:
        """A sync replayed this message to ``connection``: live delivery skips it there."""
        self._sent_to(chat_id, sequence).add(connection.connection_id)

    def _sent_to(self, chat_id: str, sequence: int) -> set[str]:
        """The connections this message was queued to (remembered for the latest ones)."""
        key = (chat_id, sequence)
        sent_to = self._recent.get(key)
        if sent_to is None:
            sent_to = self._recent[key] = set()
            if len(self._recent) > RECENT_MESSAGES:
                self._recent.popitem(last=False)
        return sent_to

    def suggest_resync(self, reason: str) -> None:
        for connection in self.all():
            connection.push_frame(frames.resync(reason))
