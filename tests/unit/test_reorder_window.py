"""The fanout's per-chat reorder window (ADR 0035) on a fake clock: it holds a record whose
predecessor has not come, releases in sequence order as soon as the hole fills, releases past
the hole once the window has passed (never later), and stays bounded."""

from __future__ import annotations

import pytest

from messaging.domain.model import Message
from messaging.fanout.ports import EventRecord
from messaging.fanout.reorder import ReorderWindow

W = 0.05


def record(chat_id: str, sequence: int, offset: int = 0) -> EventRecord:
    return EventRecord(
        0,
        offset,
        Message(
            chat_id=chat_id,
            sequence=sequence,
            sender_id="u_" + "a" * 32,
            sender_device="d",
            client_message_id=f"{chat_id}-{sequence}",
            text="hi",
            created_at_ms=0,
        ),
    )


def seqs(records: list[EventRecord]) -> list[tuple[str, int]]:
    return [(r.message.chat_id, r.message.sequence) for r in records]


def test_in_order_records_pass_straight_through() -> None:
    window = ReorderWindow(W)
    assert seqs(window.offer([record("c", 1), record("c", 2)], 0.0)) == [("c", 1), ("c", 2)]
    assert seqs(window.offer([record("c", 3)], 0.001)) == [("c", 3)]
    assert window.held == 0
    assert window.holds == 0
    assert window.next_due() is None


def test_a_record_ahead_of_its_predecessor_is_held_until_the_hole_fills() -> None:
    window = ReorderWindow(W)
    window.offer([record("c", 1)], 0.0)
    assert window.offer([record("c", 3), record("c", 4)], 0.01) == []
    assert window.held == 2
    assert window.next_due() == pytest.approx(0.01 + W)
    assert seqs(window.offer([record("c", 2)], 0.02)) == [("c", 2), ("c", 3), ("c", 4)]
    assert window.held == 0
    assert window.expired == 0
    assert window.next_due() is None


def test_the_predecessor_in_the_same_batch_releases_in_order() -> None:
    window = ReorderWindow(W)
    window.offer([record("c", 5)], 0.0)
    assert seqs(window.offer([record("c", 7), record("c", 6)], 0.0)) == [("c", 6), ("c", 7)]


def test_a_hole_is_given_up_after_the_window_and_never_before() -> None:
    window = ReorderWindow(W)
    window.offer([record("c", 1)], 0.0)
    window.offer([record("c", 3)], 0.0)
    window.offer([record("c", 5)], 0.02)
    assert window.due(W - 0.001) == []
    assert seqs(window.due(W)) == [("c", 3)]  # 2 never came: past it after W
    assert window.expired == 1
    assert window.due(0.02 + W - 0.001) == []  # 5 has its own window
    assert seqs(window.due(0.02 + W)) == [("c", 5)]
    # The missing ones come late: pushed at once (the client puts them in order).
    assert seqs(window.offer([record("c", 2), record("c", 4)], 1.0)) == [("c", 2), ("c", 4)]
    assert seqs(window.offer([record("c", 6)], 1.0)) == [("c", 6)]


def test_an_expired_hold_releases_the_lower_holds_with_it_in_order() -> None:
    window = ReorderWindow(W)
    window.offer([record("c", 1)], 0.0)
    window.offer([record("c", 5)], 0.0)  # due at W
    window.offer([record("c", 3)], 0.03)  # due later, but lower: goes first
    window.offer([record("c", 6)], 0.04)
    assert seqs(window.due(W)) == [("c", 3), ("c", 5), ("c", 6)]
    assert window.held == 0


def test_expired_holds_go_out_before_the_new_batch() -> None:
    window = ReorderWindow(W)
    window.offer([record("c", 1)], 0.0)
    window.offer([record("c", 3)], 0.0)
    assert seqs(window.offer([record("c", 4)], 1.0)) == [("c", 3), ("c", 4)]


def test_chats_are_independent() -> None:
    window = ReorderWindow(W)
    window.offer([record("a", 1), record("b", 1)], 0.0)
    released = window.offer([record("a", 3), record("b", 2), record("a", 2)], 0.0)
    assert seqs(released) == [("b", 2), ("a", 2), ("a", 3)]


def test_a_chat_seen_first_releases_its_first_record_and_late_ones_pass() -> None:
    window = ReorderWindow(W)
    assert seqs(window.offer([record("c", 7)], 0.0)) == [("c", 7)]
    assert seqs(window.offer([record("c", 6), record("c", 7)], 0.0)) == [("c", 6), ("c", 7)]


def test_a_redelivered_held_record_is_held_once() -> None:
    window = ReorderWindow(W)
    window.offer([record("c", 1)], 0.0)
    window.offer([record("c", 3), record("c", 3, offset=9)], 0.0)
    assert window.held == 1
    assert seqs(window.offer([record("c", 2)], 0.0)) == [("c", 2), ("c", 3)]


def test_bounded_held_releases_the_oldest_hold_early() -> None:
    window = ReorderWindow(W, max_held=3)
    window.offer([record("c", 1)], 0.0)
    released = window.offer([record("c", s) for s in (3, 5, 7, 9)], 0.0)
    assert seqs(released) == [("c", 3)]
    assert window.held == 3
    assert seqs(window.drain()) == [("c", 5), ("c", 7), ("c", 9)]
    assert window.held == 0
    assert window.next_due() is None


def test_bounded_chats_forget_the_least_recent_and_release_its_holds() -> None:
    window = ReorderWindow(W, max_chats=2)
    window.offer([record("a", 1), record("a", 3)], 0.0)
    window.offer([record("b", 1)], 0.0)
    released = window.offer([record("c", 1)], 0.0)  # "a" was seen least recently
    assert seqs(released) == [("c", 1), ("a", 3)]
    assert window.chats == 2
    assert window.held == 0


def test_many_holes_never_outlive_the_window() -> None:
    """Whatever comes, every record is released exactly once, no later than W after it came,
    and in sequence order per chat unless its hole expired."""
    window = ReorderWindow(W, max_held=50)
    order = [1, *range(3, 200, 2), *range(2, 200, 2)]
    came: dict[int, float] = {}
    out: list[tuple[int, float]] = []
    now = 0.0
    for sequence in order:
        now += 0.001
        came[sequence] = now
        out += [(r.message.sequence, now) for r in window.offer([record("c", sequence)], now)]
    while (due := window.next_due()) is not None:
        out += [(r.message.sequence, due) for r in window.due(due)]
    assert sorted(s for s, _ in out) == list(range(1, 200))
    assert all(at - came[s] <= W + 1e-9 for s, at in out)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="window_seconds"):
        ReorderWindow(-1)
    with pytest.raises(ValueError, match="max_held"):
        ReorderWindow(W, max_held=0)
