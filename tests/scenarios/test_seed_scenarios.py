"""The five failure scenarios of the MVP definition (its acceptance criteria), each on at least
two real app processes, each ending with the consistency checker over every client's history
and final view (docs/failure-scenarios.md maps each to its fault and its "switched off"
evidence)."""

from __future__ import annotations

import asyncio
import random
import string

import attrs
import pytest

from messaging.client import SendRejected
from tests.conftest import RUN_ID
from tests.scenarios.conftest import scenario_env
from tests.scenarios.harness import OPTIONS, App, Member, Scenario


async def becomes_ready(scenario: Scenario, app: App) -> None:
    """A process restarted under the same instance id (as a crashed container restarts with its
    hostname), possibly within the routing ttl, must not take its dead predecessor's liveness
    key for a live twin and stay unready."""
    for _ in range(50):
        if await app.ready():
            return
        await asyncio.sleep(0.2)
    scenario.fail(f"the restarted process {app.name} never became ready", [app.log_tail(5)])


def replayed_since(member: Member, start: int, chat_id: str) -> list[int]:
    return [r.sequence for r in member.history.received[start:] if r.chat_id == chat_id]


async def test_a_stale_sequence_reconnect_replays_exactly_the_missing_messages(
    scenario: Scenario,
) -> None:
    """Bob goes offline at sequence 10 and comes back, on the other process, with that stale
    position: the server replays 11..25 (and the direct chat's missing ones), in order, each
    once. A second device of Bob's that lost even more (position 3) gets exactly 4..25."""
    a, b = scenario.apps
    alice = await scenario.member("alice", a)
    carol = await scenario.member("carol", a)
    # Only position syncs (no position-less discovery sync): what arrives is exactly the
    # server's answer to "everything after my position".
    bob = await scenario.member("bob", b, discover=False)
    group = await scenario.group(alice, [bob, carol])
    direct = await scenario.direct(alice, bob)
    for member in (alice, bob, carol):
        await member.connect()
    for n in range(10):
        await (alice if n % 2 else carol).send(group, f"before {n}")
    await alice.send(direct, "direct before")
    await scenario.converge()

    await bob.disconnect()
    stale = bob.delivered_positions()
    assert stale == {group: 10, direct: 1}
    for n in range(15):
        await (alice if n % 2 else carol).send(group, f"while bob is away {n}")
    for n in range(5):
        await alice.send(direct, f"direct while away {n}")
    await scenario.converge()  # fanout is done: nothing live can reach Bob's new connection
    mark, duplicates = len(bob.history.received), sum(bob.history.duplicates.values())
    await bob.connect(a, positions=stale)  # the other process this time
    await scenario.converge()

    assert replayed_since(bob, mark, group) == list(range(11, 26))
    assert replayed_since(bob, mark, direct) == list(range(2, 7))
    assert all(record.replay for record in bob.history.received[mark:])
    assert sum(bob.history.duplicates.values()) == duplicates, "nothing was sent twice"

    tablet = await scenario.device(bob, "bob-tablet", b, positions={group: 3}, discover=False)
    await scenario.converge()
    assert replayed_since(tablet, 0, group) == list(range(4, 26))
    assert replayed_since(tablet, 0, direct) == list(range(1, 7))
    assert sum(tablet.history.duplicates.values()) == 0
    await scenario.final_check()


async def test_a_process_crash_mid_fanout_loses_nothing(scenario: Scenario) -> None:
    """Process B is killed (SIGKILL at ``before_handoff``) after it consumed a batch from Kafka
    and before it handed it to any socket. The member on process A still gets every message
    live (B committed nothing: its partitions' next owner re-delivers); the members on B lose
    their connection, reconnect when B is back, and sync what they missed."""
    a, b = scenario.apps
    sender = await scenario.member("sender", a)
    near = await scenario.member("near", a)
    far = [await scenario.member(f"far{i}", b) for i in range(2)]
    # Eight chats: with eight partitions shared by two processes, some land on B.
    chats = [await scenario.group(sender, [near, *far], f"g{i}") for i in range(8)]
    for member in scenario.members:
        await member.connect()
    for chat in chats:
        await sender.send(chat, "warm-up")
    await scenario.converge()

    await b.arm("before_handoff")
    for n in range(48):
        await sender.send(chats[n % len(chats)], f"during the crash {n}")
        if await b.wait_dead(0.3):
            break
    else:
        scenario.fail("process B never consumed a batch of the eight chats", [])
    assert b.returncode == -9
    scenario.context.append(f"B died after {n + 1} sends")
    # Nothing more is sent: only redelivery can bring the crashed batch to `near`.
    await scenario.converge(members=[near], seconds=30)

    await b.restart()
    await scenario.converge()
    assert all(m.chat.stats.reconnects >= 1 for m in far)
    await becomes_ready(scenario, b)
    await scenario.final_check()


async def test_a_duplicate_submission_returns_the_original_sequence_and_stores_nothing(
    scenario: Scenario,
) -> None:
    """The same ``client_message_id`` submitted again (by the same device after its ack, and by
    the user's other device on the other process) is answered with the original sequence and
    ``duplicate: true``; the chat's head does not move and REST history holds it once. The same
    id with other content is refused."""
    a, b = scenario.apps
    alice = await scenario.member("alice", a)
    bob = await scenario.member("bob", b)
    chat = await scenario.direct(alice, bob)
    laptop = await scenario.device(alice, "alice-laptop", b, connect=False)
    for member in (alice, bob, laptop):
        await member.connect()

    first = await alice.send(chat, "hello 👋", "hello-1")
    await bob.send(chat, "hi")
    head = (await scenario.heads())[chat]
    again = await alice.send(chat, "hello 👋", "hello-1")
    elsewhere = await laptop.send(chat, "hello 👋", "hello-1")
    assert not first.duplicate
    assert (again.sequence, again.duplicate) == (first.sequence, True)
    assert (elsewhere.sequence, elsewhere.duplicate) == (first.sequence, True)
    with pytest.raises(SendRejected) as refused:
        await alice.send(chat, "other text", "hello-1")
    assert refused.value.code == "idempotency_key_reused"

    assert (await scenario.heads())[chat] == head
    stored = (await scenario.rest_views())[f"rest:{chat}"][chat]
    assert [(e.sequence, e.client_message_id) for e in stored] == [
        (first.sequence, "hello-1"),
        (first.sequence + 1, stored[-1].client_message_id),
    ]
    await scenario.converge()
    await scenario.final_check()


async def test_a_disconnect_before_the_ack_then_a_retry_stores_one_message(
    scenario: Scenario,
) -> None:
    """Alice's process persists her message and dies before answering (SIGKILL at
    ``after_persist``). Her client reconnects when the process is back, resends with the same
    ``client_message_id`` and gets the stored sequence (``duplicate: true``); the message is
    stored once and Bob, on the other process, gets it once (the outbox sweeper publishes what
    the dead process never did). Then five sends whose connection is dropped right after
    submitting: each stored once, each answered with its sequence."""
    a, b = scenario.apps
    alice = await scenario.member("alice", b)
    bob = await scenario.member("bob", a)
    chat = await scenario.direct(alice, bob)
    await alice.connect()
    await bob.connect()
    await alice.send(chat, "warm-up")
    await scenario.converge()

    await b.arm("after_persist")
    pending = alice.submit(chat, "persisted, never acknowledged", "lost-ack-1")
    assert await b.wait_dead(20), "the armed process did not die"
    assert b.returncode == -9
    await asyncio.sleep(0.5)
    assert not pending.done(), "no answer can have come from a dead process"
    await b.restart()
    await becomes_ready(scenario, b)
    try:
        async with asyncio.timeout(60):
            result = await asyncio.shield(pending)
    except TimeoutError:
        record = alice.history.send("lost-ack-1")
        scenario.fail("the send was never answered after the reconnect", [str(record)])
    assert (result.sequence, result.duplicate) == (2, True)
    assert result.attempts >= 2

    rng = random.Random(7)
    for n in range(5):
        dropped = alice.submit(chat, f"dropped {n}")
        await asyncio.sleep(rng.uniform(0, 0.02))
        alice.chat.drop_connection()
        async with asyncio.timeout(60):
            answer = await asyncio.shield(dropped)
        assert answer.sequence == 3 + n

    stored = (await scenario.rest_views())[f"rest:{chat}"][chat]
    assert [e.client_message_id for e in stored].count("lost-ack-1") == 1
    assert [e.sequence for e in stored] == list(range(1, 8))
    await scenario.converge()
    await scenario.final_check()


def incompressible(size: int, rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(size))


async def test_a_slow_client_is_disconnected_then_reconnects_and_syncs(
    scenario: Scenario, extra_apps: list[App]
) -> None:
    """A client on a process with a small outbound queue (50 frames, 64 KiB) stops reading
    (with a 4 KiB receive buffer, so the kernel absorbs little) while four writers on the other
    process send it 4 KB messages: the server closes it with 4009, it reconnects, syncs, and
    ends with every message in order."""
    (a, _b), settings = scenario.apps, scenario.settings
    slow_app = App(
        f"scn{RUN_ID}-slow",
        scenario_env(
            settings,
            MESSAGING_OUTBOUND_QUEUE_MESSAGES="50",
            MESSAGING_OUTBOUND_QUEUE_BYTES="65536",
        ),
    )
    extra_apps.append(slow_app)
    await slow_app.launch()
    reader = await scenario.member(
        "reader", slow_app, options=attrs.evolve(OPTIONS, receive_buffer_bytes=4096)
    )
    writers = [await scenario.member(f"writer{i}", a) for i in range(4)]
    chats = [await scenario.direct(writer, reader) for writer in writers]
    for member in scenario.members:
        await member.connect()
    for writer, chat in zip(writers, chats, strict=True):
        await writer.send(chat, "warm-up")
    await scenario.converge()

    reader.chat.pause_reading()
    stop = asyncio.Event()
    rng = random.Random(42)
    text = incompressible(4000, rng)

    async def write(writer: Member, chat: str) -> None:
        for n in range(1000):  # at most ~16 MB in all; the close comes after ~4-5 MB
            if stop.is_set():
                return
            await writer.send(chat, f"{n} {text}")

    writing = asyncio.gather(*(write(w, c) for w, c in zip(writers, chats, strict=True)))
    try:
        for _ in range(1200):
            if await slow_app.metric("messaging_ws_slow_consumer_disconnects_total") >= 1:
                break
            await asyncio.sleep(0.1)
        else:
            scenario.fail("the server never disconnected the stalled client", [])
    finally:
        stop.set()
        # Resume within the server's 5 s close timeout: the client reads what is buffered,
        # then the close frame.
        reader.chat.resume_reading()
        await writing
    for _ in range(300):
        if reader.chat.stats.slow_consumer_disconnects:
            break
        await asyncio.sleep(0.1)
    else:
        scenario.fail("the client never saw close code 4009", [str(reader.chat.stats)])
    await scenario.converge(seconds=60)
    assert reader.chat.stats.reconnects >= 1
    assert any(c.close_code == 4009 for c in reader.history.connections)
    await scenario.final_check()
