"""The consistency checker: each kind of violation is named on a broken history, a clean one
passes, and every history produced by a correct model of the system passes (Hypothesis)."""

from __future__ import annotations

import itertools
import random

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messaging.client.checker import (
    ChatView,
    Report,
    ViewEntry,
    ViolationKind,
    check,
    view_of,
)
from messaging.client.history import History
from messaging.client.ordering import ReorderBuffer

K = ViolationKind
CHAT = "g_1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000

    def tick(self) -> int:
        self.now += 10
        return self.now


def acked(
    history: History,
    clock: Clock,
    cmid: str,
    sequence: int,
    *,
    chat: str = CHAT,
    text: str | None = None,
    duplicate: bool = False,
) -> None:
    record = history.send_requested(chat, cmid, text or f"text of {cmid}")
    record.requested_at_ms = clock.tick()
    record.attempts = 1
    record.outcome = "acked"
    record.sequence = sequence
    record.duplicate = duplicate
    record.finished_at_ms = clock.tick()


def received(
    history: History,
    clock: Clock,
    sequence: int,
    sender: str,
    cmid: str,
    *,
    chat: str = CHAT,
    text: str | None = None,
    delivered: bool = True,
) -> None:
    record = history.message_received(
        chat_id=chat,
        sequence=sequence,
        sender_id=sender,
        sender_device=f"dev-{sender}",
        client_message_id=cmid,
        text=text or f"text of {cmid}",
        created_at_ms=clock.now,
        received_at_ms=clock.tick(),
        replay=False,
    )
    assert record is not None
    if delivered:
        record.delivered_at_ms = clock.tick()


def conversation() -> tuple[dict[str, History], Clock]:
    """Alice sends a1 (1) and a2 (3), Bob b1 (2); both receive all three in order."""
    clock = Clock()
    alice, bob = History(user_id="u_a", device_id="da"), History(user_id="u_b", device_id="db")
    acked(alice, clock, "a1", 1)
    acked(bob, clock, "b1", 2)
    acked(alice, clock, "a2", 3)
    for history in (alice, bob):
        received(history, clock, 1, "u_a", "a1")
        received(history, clock, 2, "u_b", "b1")
        received(history, clock, 3, "u_a", "a2")
        history.ack_sent(CHAT, 3)
        history.acked_received(CHAT, 3)
    return {"alice": alice, "bob": bob}, clock


def full_check(histories: dict[str, History], **views: dict[str, ChatView]) -> Report:
    final = {name: view_of(history) for name, history in histories.items()}
    final.update(views)
    return check(histories, final)


def entry(sequence: int, sender: str, cmid: str, text: str | None = None) -> ViewEntry:
    return ViewEntry(
        sequence=sequence, sender_id=sender, client_message_id=cmid, text=text or f"text of {cmid}"
    )


# ---------------------------------------------------------------- clean


def test_a_clean_history_passes() -> None:
    histories, _ = conversation()
    report = full_check(histories)
    assert report.ok, report.summary()
    assert (report.clients, report.chats, report.acked_sends) == (2, 1, 3)
    assert report.observations == 3 + 2 * 3 * 2  # acks, received twice over, views
    assert "0 violation(s)" in report.summary()


def test_histories_alone_pass_and_views_are_optional() -> None:
    histories, _ = conversation()
    assert check(histories).ok


def test_a_rest_view_without_history_is_compared_too() -> None:
    histories, _ = conversation()
    rest = [entry(1, "u_a", "a1"), entry(2, "u_b", "b1"), entry(3, "u_a", "a2")]
    assert check(histories, {"rest": {CHAT: rest}}).ok
    report = check(histories, {"rest": {CHAT: rest[:2]}})
    assert report.kinds == {K.ACKED_MESSAGE_MISSING}


# ---------------------------------------------------------------- each violation


def test_an_acked_message_missing_from_a_members_view() -> None:
    histories, _ = conversation()
    bob_view = ChatView(entries=(entry(1, "u_a", "a1"), entry(2, "u_b", "b1")))
    report = full_check(histories, bob={CHAT: bob_view})
    assert report.kinds == {K.ACKED_MESSAGE_MISSING}
    (violation,) = report.violations
    assert (violation.chat_id, violation.sequence, violation.clients) == (CHAT, 3, ("bob",))
    assert "bob" in violation.message
    assert "sequence(s) 3" in violation.message


def test_two_messages_with_one_sequence() -> None:
    histories, clock = conversation()
    acked(histories["bob"], clock, "b2", 3)  # the server gave 3 to a2 and to b2
    report = check(histories)
    assert K.SEQUENCE_CONFLICT in report.kinds
    conflict = report.of_kind(K.SEQUENCE_CONFLICT)[0]
    assert conflict.sequence == 3
    assert "'b2'" in conflict.message
    assert "'a2'" in conflict.message


def test_an_ack_that_contradicts_what_members_received() -> None:
    clock = Clock()
    alice, bob = History(user_id="u_a"), History(user_id="u_b")
    acked(alice, clock, "a1", 1)
    received(bob, clock, 1, "u_c", "c1")
    report = check({"alice": alice, "bob": bob})
    assert report.kinds == {K.SEQUENCE_CONFLICT}


def test_one_client_message_id_with_two_sequences() -> None:
    histories, clock = conversation()
    # A retry of a1 stored again: the server answered with a new sequence, as if new.
    acked(histories["alice"], clock, "a1", 4)
    for history in histories.values():
        received(history, clock, 4, "u_a", "a1")
    report = full_check(histories)
    assert K.IDEMPOTENCY_VIOLATED in report.kinds
    assert all(v.kind is K.IDEMPOTENCY_VIOLATED for v in report.violations)
    assert any("2 places" in v.message for v in report.violations)
    assert any("2 times as a new message" in v.message for v in report.violations)


def test_a_duplicate_answer_with_the_original_sequence_is_fine() -> None:
    histories, clock = conversation()
    acked(histories["alice"], clock, "a1", 1, duplicate=True)
    assert full_check(histories).ok


def test_the_same_id_stored_in_two_chats() -> None:
    histories, clock = conversation()
    acked(histories["alice"], clock, "a1", 1, chat="g_2")
    report = check(histories)
    assert K.IDEMPOTENCY_VIOLATED in report.kinds


def test_members_disagree_on_content() -> None:
    histories, clock = conversation()
    carol = History(user_id="u_c")
    received(carol, clock, 1, "u_a", "a1")
    received(carol, clock, 2, "u_b", "b1", text="something else")
    received(carol, clock, 3, "u_a", "a2")
    histories["carol"] = carol
    report = full_check(histories)
    assert K.VIEWS_DIVERGE in report.kinds
    assert report.kinds <= {K.VIEWS_DIVERGE, K.SEQUENCE_CONFLICT}
    diverge = report.of_kind(K.VIEWS_DIVERGE)[0]
    assert diverge.sequence == 2
    assert "carol" in diverge.message


def test_members_disagree_on_content_without_any_ack() -> None:
    clock = Clock()
    bob, carol = History(user_id="u_b"), History(user_id="u_c")
    received(bob, clock, 1, "u_a", "a1")
    received(carol, clock, 1, "u_a", "a9")
    report = check({"bob": bob, "carol": carol})
    assert report.kinds == {K.VIEWS_DIVERGE}


def test_a_member_delivering_out_of_order() -> None:
    clock = Clock()
    bob = History(user_id="u_b")
    received(bob, clock, 2, "u_a", "a2")
    received(bob, clock, 1, "u_a", "a1")
    report = check({"bob": bob})
    assert report.kinds == {K.VIEWS_DIVERGE}
    assert "out of the chat's order" in report.violations[0].message


def test_a_final_view_out_of_order() -> None:
    histories, _ = conversation()
    view = ChatView(entries=(entry(1, "u_a", "a1"), entry(3, "u_a", "a2"), entry(2, "u_b", "b1")))
    report = full_check(histories, bob={CHAT: view})
    assert report.kinds == {K.VIEWS_DIVERGE}


def test_a_member_lacking_a_message_others_hold() -> None:
    histories, clock = conversation()
    # c1 was stored (Alice received it) but its sender's ack never came: no ack to go by.
    received(histories["alice"], clock, 4, "u_c", "c1")
    report = full_check(histories)
    assert report.kinds == {K.VIEWS_DIVERGE}
    assert "ends at 3" in report.violations[0].message
    assert report.violations[0].clients == ("bob",)


def test_a_gap_in_a_final_view() -> None:
    clock = Clock()
    bob = History(user_id="u_b")
    for sequence in (1, 2, 4, 7):
        received(bob, clock, sequence, "u_a", f"a{sequence}")
    report = full_check({"bob": bob})
    assert report.kinds == {K.SEQUENCE_GAP}
    assert "3, 5-6" in report.violations[0].message


def test_a_view_starting_from_a_position_has_no_gap_below_it() -> None:
    clock = Clock()
    bob = History(user_id="u_b")
    for sequence in (5, 6):
        received(bob, clock, sequence, "u_a", f"a{sequence}")
    assert check({"bob": bob}, {"bob": view_of(bob, after={CHAT: 4})}).ok
    assert check({"bob": bob}, {"bob": view_of(bob)}).kinds == {K.SEQUENCE_GAP}


def test_a_removed_member_sees_nothing_after_its_removal() -> None:
    histories, _ = conversation()
    view = ChatView(entries=(entry(1, "u_a", "a1"), entry(2, "u_b", "b1")), until=2)
    assert full_check(histories, bob={CHAT: view}).ok


def test_read_your_writes_broken() -> None:
    histories, _ = conversation()
    view = ChatView(entries=(entry(1, "u_a", "a1"), entry(2, "u_b", "b1")))
    report = full_check(histories, alice={CHAT: view})
    assert report.kinds == {K.READ_YOUR_WRITES}
    assert "its own" in report.violations[0].message


def test_delivery_acks_moving_backwards() -> None:
    histories, _ = conversation()
    histories["bob"].ack_sent(CHAT, 2)
    report = full_check(histories)
    assert report.kinds == {K.ACK_REGRESSED}
    assert "after acking up to 3" in report.violations[0].message


def test_server_acks_moving_backwards() -> None:
    histories, _ = conversation()
    histories["bob"].acked_received(CHAT, 1)
    report = full_check(histories)
    assert report.kinds == {K.ACK_REGRESSED}
    assert "after saying 3" in report.violations[0].message


def test_a_send_acked_below_an_earlier_acked_send() -> None:
    clock = Clock()
    alice, bob = History(user_id="u_a"), History(user_id="u_b")
    acked(alice, clock, "a1", 5)
    acked(bob, clock, "b1", 4)  # requested after a1 was acked at 5, yet it got 4
    report = check({"alice": alice, "bob": bob})
    assert report.kinds == {K.ACK_REGRESSED}
    assert "before it was requested" in report.violations[0].message
    assert check({"alice": alice, "bob": bob}, realtime_order=False).ok


def test_concurrent_sends_may_get_sequences_in_any_order() -> None:
    clock = Clock()
    alice, bob = History(user_id="u_a"), History(user_id="u_b")
    first = alice.send_requested(CHAT, "a1", "x")
    second = bob.send_requested(CHAT, "b1", "y")
    first.requested_at_ms, second.requested_at_ms = clock.tick(), clock.tick()
    for record, sequence in ((second, 1), (first, 2)):
        record.outcome, record.sequence, record.duplicate = "acked", sequence, False
        record.finished_at_ms = clock.tick()
    assert check({"alice": alice, "bob": bob}).ok


def test_a_retry_of_an_old_send_may_return_a_lower_sequence() -> None:
    clock = Clock()
    alice, bob = History(user_id="u_a"), History(user_id="u_b")
    pending = alice.send_requested(CHAT, "a1", "x")  # stored at 1; its ack was lost
    pending.requested_at_ms, pending.outcome = clock.tick(), "abandoned"
    acked(bob, clock, "b1", 2)
    acked(alice, clock, "a1", 1, text="x", duplicate=True)  # the retry, after b1's ack
    assert check({"alice": alice, "bob": bob}).ok


def test_an_ack_ahead_of_delivery() -> None:
    histories, _ = conversation()
    histories["bob"].ack_sent(CHAT, 9)
    report = full_check(histories)
    assert report.kinds == {K.ACK_AHEAD_OF_DELIVERY}


def test_a_duplicate_delivery() -> None:
    histories, clock = conversation()
    received(histories["bob"], clock, 3, "u_a", "a2")
    report = full_check(histories)
    assert K.DUPLICATE_DELIVERY in report.kinds
    assert report.kinds == {K.DUPLICATE_DELIVERY}


def test_only_delivered_messages_are_in_a_view_by_default() -> None:
    clock = Clock()
    bob = History(user_id="u_b")
    received(bob, clock, 1, "u_a", "a1")
    received(bob, clock, 2, "u_a", "a2", delivered=False)
    assert [e.sequence for e in view_of(bob)[CHAT].entries] == [1]
    assert [e.sequence for e in view_of(bob, delivered_only=False)[CHAT].entries] == [1, 2]


def test_a_history_without_messages_is_checked_for_sends_and_acks() -> None:
    clock = Clock()
    light = History(user_id="u_a", record_messages=False)
    acked(light, clock, "a1", 1)
    light.ack_sent(CHAT, 1)
    assert check({"light": light}).ok


def test_the_summary_lists_violations_and_is_bounded() -> None:
    clock = Clock()
    bob = History(user_id="u_b")
    for sequence in range(1, 60, 2):
        received(bob, clock, sequence, "u_a", f"a{sequence}")
        received(bob, clock, sequence, "u_a", f"a{sequence}")
    report = check({"bob": bob})
    assert len(report.violations) == 30
    summary = report.summary(limit=5)
    assert summary.startswith("30 violation(s)")
    assert "and 25 more" in summary
    assert str(report.violations[0]).startswith("[duplicate_delivery]")


# ---------------------------------------------------------------- a correct model


@attrs.define
class _Client:
    name: str
    user: str
    history: History
    buffers: dict[str, ReorderBuffer[ViewEntry]] = attrs.field(factory=dict)
    acked_up_to: dict[str, int] = attrs.field(factory=dict)
    pending: list[tuple[str, str, str]] = attrs.field(factory=list)
    counter: int = 0


class Model:
    """A correct system: per-chat logs with gapless sequences, idempotent sends, at-least-once
    out-of-order transport, clients that reorder, dedupe, ack and finally sync everything."""

    def __init__(self, rng: random.Random, users: int, chats: list[list[int]], devices: int):
        self.rng = rng
        self.now = 1_000
        self.logs: dict[str, list[ViewEntry]] = {f"c{i}": [] for i in range(len(chats))}
        self.members = {f"c{i}": [f"u{m}" for m in chat] for i, chat in enumerate(chats)}
        self.stored: dict[tuple[str, str], tuple[str, int]] = {}
        self.acks: dict[tuple[str, str], int] = {}
        self.clients = [
            _Client(f"u{u}/d{d}", f"u{u}", History(user_id=f"u{u}", device_id=f"d{d}"))
            for u in range(users)
            for d in range(1 + (u < devices))
        ]

    def tick(self) -> int:
        self.now += self.rng.randint(0, 3)
        return self.now

    def chats_of(self, client: _Client) -> list[str]:
        return [chat for chat, members in self.members.items() if client.user in members]

    def append(self, client: _Client, chat: str, cmid: str, text: str) -> tuple[int, bool]:
        key = (client.user, cmid)
        if key in self.stored:
            return self.stored[key][1], True
        sequence = len(self.logs[chat]) + 1
        self.logs[chat].append(
            ViewEntry(sequence=sequence, sender_id=client.user, client_message_id=cmid, text=text)
        )
        self.stored[key] = (chat, sequence)
        return sequence, False

    def send(self, client: _Client, pick: int, ack_lost: bool) -> None:
        chats = self.chats_of(client)
        if not chats:
            return
        chat = chats[pick % len(chats)]
        client.counter += 1
        cmid = f"{client.history.device_id}-{client.user}-{client.counter}"
        text = f"{client.name} says {client.counter}"
        record = client.history.send_requested(chat, cmid, text)
        record.requested_at_ms = self.tick()
        record.attempts = 1
        sequence, duplicate = self.append(client, chat, cmid, text)
        if ack_lost:
            client.pending.append((chat, cmid, text))
        else:
            self._answer(client, cmid, sequence, duplicate)

    def retry(self, client: _Client) -> None:
        if not client.pending:
            return
        chat, cmid, text = client.pending.pop(0)
        record = client.history.send(cmid)
        assert record is not None
        record.attempts += 1
        sequence, duplicate = self.append(client, chat, cmid, text)
        self._answer(client, cmid, sequence, duplicate)

    def _answer(self, client: _Client, cmid: str, sequence: int, duplicate: bool) -> None:
        record = client.history.send(cmid)
        assert record is not None
        record.outcome, record.sequence, record.duplicate = "acked", sequence, duplicate
        record.finished_at_ms = self.tick()

    def deliver(self, client: _Client, pick: int, count: int, everything: bool = False) -> None:
        chats = self.chats_of(client)
        if not chats:
            return
        chat = chats[pick % len(chats)]
        log = self.logs[chat]
        buffer = client.buffers.setdefault(chat, ReorderBuffer())
        if everything:
            frames = list(log)
        else:  # any frames, in any order, with duplicates: at-least-once, reordered transport
            frames = [self.rng.choice(log) for _ in range(min(count, 3 * len(log)))]
        for frame in frames:
            for message in buffer.receive(frame):
                record = client.history.message_received(
                    chat_id=chat,
                    sequence=message.sequence,
                    sender_id=message.sender_id,
                    sender_device="d",
                    client_message_id=message.client_message_id,
                    text=message.text,
                    created_at_ms=self.now,
                    received_at_ms=self.tick(),
                    replay=everything,
                )
                assert record is not None
                record.delivered_at_ms = self.tick()
        delivered = buffer.delivered
        if delivered > client.acked_up_to.get(chat, 0):
            client.acked_up_to[chat] = delivered
            client.history.ack_sent(chat, delivered)
            stored = max(self.acks.get((client.user, chat), 0), delivered)
            self.acks[(client.user, chat)] = stored
            client.history.acked_received(chat, stored)

    def finish(self) -> None:
        for client in self.clients:
            while client.pending and self.rng.random() < 0.8:
                self.retry(client)
            for record in client.history.sends:
                if record.outcome == "pending":
                    record.outcome = "abandoned"
        for client in self.clients:
            for pick in range(len(self.chats_of(client))):
                self.deliver(client, pick, 0, everything=True)


operations = st.lists(
    st.tuples(
        st.sampled_from(["send", "send_lost_ack", "retry", "deliver"]),
        st.integers(0, 20),
        st.integers(0, 20),
        st.integers(0, 8),
    ),
    min_size=10,
    max_size=80,
)


@st.composite
def models(draw: st.DrawFn) -> Model:
    users = draw(st.integers(2, 4))
    chat = st.lists(st.integers(0, users - 1), min_size=2, max_size=users, unique=True)
    chats = draw(st.lists(chat, min_size=1, max_size=3))
    model = Model(draw(st.randoms(use_true_random=False)), users, chats, draw(st.integers(0, 2)))
    for kind, who, pick, count in draw(operations):
        client = model.clients[who % len(model.clients)]
        if kind == "send":
            model.send(client, pick, ack_lost=False)
        elif kind == "send_lost_ack":
            model.send(client, pick, ack_lost=True)
        elif kind == "retry":
            model.retry(client)
        else:
            model.deliver(client, pick, count)
    model.finish()
    return model


def histories_and_views(model: Model) -> tuple[dict[str, History], dict[str, dict[str, ChatView]]]:
    histories = {client.name: client.history for client in model.clients}
    return histories, {name: view_of(history) for name, history in histories.items()}


@settings(max_examples=150, deadline=None)
@given(models())
def test_every_history_of_a_correct_model_passes(model: Model) -> None:
    histories, views = histories_and_views(model)
    report = check(histories, views)
    assert report.ok, report.summary()


@settings(max_examples=100, deadline=None)
@given(models(), st.randoms(use_true_random=False))
def test_losing_any_message_from_any_final_view_is_caught(model: Model, rng: random.Random) -> None:
    histories, views = histories_and_views(model)
    candidates = [
        (name, chat)
        for name, chats in views.items()
        for chat, view in chats.items()
        if view.entries
    ]
    if not candidates:
        return
    name, chat = rng.choice(candidates)
    entries = list(views[name][chat].entries)
    del entries[rng.randrange(len(entries))]
    views[name][chat] = ChatView(entries=tuple(entries))
    report = check(histories, views)
    assert not report.ok
    assert report.kinds & {
        K.SEQUENCE_GAP,
        K.ACKED_MESSAGE_MISSING,
        K.READ_YOUR_WRITES,
        K.VIEWS_DIVERGE,
    }


@pytest.mark.parametrize("swap", list(itertools.combinations(range(3), 2)))
def test_swapping_two_sequences_in_one_view_is_caught(swap: tuple[int, int]) -> None:
    histories, _ = conversation()
    original = [entry(1, "u_a", "a1"), entry(2, "u_b", "b1"), entry(3, "u_a", "a2")]
    i, j = swap
    swapped = list(original)
    swapped[i] = attrs.evolve(original[j], sequence=original[i].sequence)
    swapped[j] = attrs.evolve(original[i], sequence=original[j].sequence)
    report = full_check(histories, bob={CHAT: ChatView(entries=tuple(swapped))})
    assert {K.SEQUENCE_CONFLICT, K.VIEWS_DIVERGE, K.IDEMPOTENCY_VIOLATED} <= report.kinds
