"""What a connection remembers it was sent (``Connection.saw``), which lets an ack up to it skip
the visibility reads (ADR 0015)."""

from __future__ import annotations

from messaging.connection.outbound import OutboundQueue
from messaging.connection.session import DELIVERED_CHATS, Connection
from messaging.metrics import Metrics


async def _send(_: str) -> None:
    return None


def connection() -> Connection:
    return Connection("u", "d", OutboundQueue(10, 10_000), Metrics(), _send)


def test_an_idle_connection_remembers_nothing() -> None:
    c = connection()
    assert c.delivered is None
    assert not c.was_sent("g_1", 1)


def test_only_sequences_up_to_the_highest_sent_count_as_sent() -> None:
    c = connection()
    c.saw("g_1", 5)
    c.saw("g_1", 3)  # a late duplicate does not lower it
    assert c.was_sent("g_1", 5)
    assert c.was_sent("g_1", 1)
    assert not c.was_sent("g_1", 6)
    assert not c.was_sent("g_1", 0)
    assert not c.was_sent("g_2", 1)


def test_it_remembers_a_bounded_number_of_chats_the_oldest_forgotten_first() -> None:
    c = connection()
    for n in range(DELIVERED_CHATS + 10):
        c.saw(f"g_{n}", 1)
    assert c.delivered is not None
    assert len(c.delivered) == DELIVERED_CHATS
    assert not c.was_sent("g_0", 1)  # forgotten: its ack takes the checked path
    assert c.was_sent(f"g_{DELIVERED_CHATS + 9}", 1)
