"""What the command line asked for (``messaging bench --help``); no heavy imports here: the
``messaging`` command builds its parser from this package on every start."""

from __future__ import annotations

import attrs

SCENARIO_NAMES = ("direct", "group", "catchup", "connections", "mixed")


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
