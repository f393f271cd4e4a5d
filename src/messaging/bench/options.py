"""What the command line asked for (``messaging bench --help``); no heavy imports here: the
``messaging`` command builds its parser from this package on every start."""

from __future__ import annotations

import attrs

SCENARIO_NAMES = ("direct", "group", "catchup", "connections", "mixed", "hot")
SUITE_NAMES = ("direct", "group", "catchup", "connections", "mixed")
"""What ``messaging bench suite`` runs (``hot`` is run on its own)."""
HOT_SENDERS = 50
"""``hot``: sending connections by default (issue 16: 50 concurrent senders)."""
MAX_DEVICES_PER_MEMBER = 32


@attrs.define(kw_only=True)
class Options:
    """What the command line asked for (see ``messaging bench --help``)."""

    rate: float | None = None
    concurrency: int = 16
    duration: float = 10.0
    warmup: float = 1.0
    max_messages: int = 1_000_000
    members: tuple[int, ...] = (10,)
    senders: int | None = None
    messages: int = 10_000
    connections: int = 1000
    users: int | None = None
    chats: int | None = None
    sweep: tuple[float, ...] = ()
    text_size: int = 64
    client_procs: int = 2
    drain_timeout: float = 30.0
    baselines: frozenset[str] = frozenset({"dynamodb", "kafka", "echo"})
    baseline_duration: float = 5.0
    connect_concurrency: int = 64
    idle_duration: float = 3.0
    """Seconds of no traffic, clients connected, before the load: the CPU cost's idle point."""
    ack_interval: float = 0.1
    """The client library's ack batching interval (its default: 0.1 s)."""
    in_flight: tuple[int, ...] = (1,)
    """``hot``: sends each sending connection keeps in flight; one closed-loop phase per value."""


@attrs.frozen
class HotLayout:
    """The connections of ``messaging bench hot``: ``members`` users, each with
    ``devices`` connected devices (every one a receiving connection, as the server pushes a
    chat's messages to every device of every member); the first ``senders`` connections, taken
    device by device across the members (member 0 device 0, member 1 device 0, ...), also send.
    So 50 senders into a 10-member chat are the 10 members' 5 devices each, 50 sockets."""

    members: int
    senders: int

    def __attrs_post_init__(self) -> None:
        if self.members < 2:
            raise ValueError("a hot chat needs at least 2 members")
        if self.senders < 1:
            raise ValueError("a hot chat needs at least 1 sender")
        if self.devices > MAX_DEVICES_PER_MEMBER:
            raise ValueError(
                f"{self.senders} senders over {self.members} members is more than "
                f"{MAX_DEVICES_PER_MEMBER} devices per member"
            )

    @property
    def devices(self) -> int:
        """Devices per member: enough for every sender to be a connection of its own."""
        return -(-self.senders // self.members)

    @property
    def connections(self) -> int:
        return self.members * self.devices

    def slot(self, connection: int) -> tuple[int, int]:
        """(member, device) of the ``connection``-th connection, device-major."""
        return connection % self.members, connection // self.members
