"""Ports for test and bench processes and fault-proxy paths (``messaging.bench.apps.free_port``):
below the kernel's ephemeral range, where no outgoing connection can take them before their
listener binds, and never the same one twice in a process."""

from __future__ import annotations

from messaging.bench.apps import _ephemeral_low, free_port


def test_ports_are_below_the_ephemeral_range_and_never_repeat() -> None:
    low = _ephemeral_low()
    ports = [free_port() for _ in range(200)]
    assert all(1024 <= port < low for port in ports), ports
    assert len(set(ports)) == len(ports)
