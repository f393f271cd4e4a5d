"""ReorderBuffer: each chat's messages come out in sequence order, exactly once, whatever the
arrival order, duplicates, losses, overflow and invisible ranges (a sync closes every gap)."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messaging.client.ordering import ReorderBuffer


@attrs.frozen
class Msg:
    sequence: int
    tag: str = ""


def seqs(messages: list[Msg]) -> list[int]:
    return [m.sequence for m in messages]


def sync(buffer: ReorderBuffer[Msg], visible: range, out: list[Msg]) -> None:
    """What a sync does: replay every visible message after `delivered`, then sync_complete
    with the head (the end of the visible range)."""
    for sequence in visible:
        if sequence > buffer.delivered:
            out.extend(buffer.receive(Msg(sequence, "replay")))
    out.extend(buffer.skip_to(visible.stop - 1))


@st.composite
def arrivals(draw: st.DrawFn, max_n: int = 60) -> tuple[int, list[int]]:
    """N, and a live stream: a permutation of a subset of 1..N with duplicates."""
    n = draw(st.integers(1, max_n))
    kept = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    stream = [s for s, keep in zip(range(1, n + 1), kept, strict=True) if keep]
    stream += draw(st.lists(st.sampled_from(stream), max_size=n)) if stream else []
    return n, draw(st.permutations(stream))


@given(arrivals())
def test_delivery_is_exactly_1_to_n_in_order(case: tuple[int, list[int]]) -> None:
    n, stream = case
    buffer: ReorderBuffer[Msg] = ReorderBuffer()
    out: list[Msg] = []
    for sequence in stream:
        out.extend(buffer.receive(Msg(sequence)))
        held = buffer.lowest_held
        assert buffer.has_gap == (held is not None)
        if held is not None:
            assert held > buffer.delivered + 1
        assert seqs(out) == list(range(1, buffer.delivered + 1))
    sync(buffer, range(1, n + 1), out)
    assert seqs(out) == list(range(1, n + 1))
    assert not buffer.has_gap
    assert len(buffer) == 0


@given(arrivals(max_n=80), st.integers(1, 8))
@settings(max_examples=200)
def test_overflow_drops_the_highest_and_syncs_bring_it_back(
    case: tuple[int, list[int]], capacity: int
) -> None:
    n, stream = case
    buffer: ReorderBuffer[Msg] = ReorderBuffer(capacity=capacity)
    out: list[Msg] = []
    for sequence in stream:
        out.extend(buffer.receive(Msg(sequence)))
        assert len(buffer) <= capacity
    rounds = 0
    while buffer.has_gap or buffer.delivered < n:
        sync(buffer, range(1, n + 1), out)
        rounds += 1
        assert rounds <= 2, "a sync from `delivered` must close everything"
    assert seqs(out) == list(range(1, n + 1))


@given(arrivals(max_n=40), st.integers(0, 40))
def test_a_sync_skips_what_the_user_may_not_see(case: tuple[int, list[int]], joined: int) -> None:
    """A member who joined at `joined` sees only later sequences; the rest is skipped."""
    n, stream = case
    joined = min(joined, n)
    buffer: ReorderBuffer[Msg] = ReorderBuffer()
    out: list[Msg] = []
    for sequence in stream:
        if sequence > joined:
            out.extend(buffer.receive(Msg(sequence)))
    sync(buffer, range(joined + 1, n + 1), out)
    assert seqs(out) == list(range(joined + 1, n + 1))
    assert buffer.delivered == n


def test_duplicates_and_held_messages_are_counted() -> None:
    buffer: ReorderBuffer[Msg] = ReorderBuffer(delivered=10)
    assert buffer.receive(Msg(10)) == []
    assert buffer.receive(Msg(13)) == []
    assert buffer.receive(Msg(13)) == []
    assert buffer.duplicates == 2
    assert buffer.has_gap
    assert (buffer.lowest_held, buffer.highest_held) == (13, 13)
    assert seqs(buffer.receive(Msg(11))) == [11]
    assert seqs(buffer.receive(Msg(12))) == [12, 13]
    assert not buffer.has_gap


def test_skip_to_releases_held_messages_in_order_and_continues() -> None:
    buffer: ReorderBuffer[Msg] = ReorderBuffer()
    for sequence in (7, 5, 9, 10):
        assert buffer.receive(Msg(sequence)) == []
    assert seqs(buffer.skip_to(8)) == [5, 7, 9, 10]
    assert buffer.delivered == 10
    assert buffer.skip_to(3) == []


def test_skip_to_never_passes_a_message_dropped_for_lack_of_room() -> None:
    buffer: ReorderBuffer[Msg] = ReorderBuffer(capacity=2)
    for sequence in (3, 4, 5):  # 5 does not fit
        buffer.receive(Msg(sequence))
    assert buffer.overflowed == 1
    assert seqs(buffer.skip_to(10)) == [3, 4]  # 1 and 2 skipped, 5 must come back
    assert buffer.delivered == 4
    assert buffer.has_gap
    assert seqs(buffer.receive(Msg(5))) == [5]
    assert not buffer.has_gap


@pytest.mark.parametrize(("delivered", "capacity"), [(-1, 10), (0, 0)])
def test_invalid_arguments(delivered: int, capacity: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        ReorderBuffer(delivered, capacity=capacity)
