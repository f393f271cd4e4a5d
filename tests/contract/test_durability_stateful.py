"""A Hypothesis state machine over the durability services, against every store target.

Two ``IngestService`` instances share one store, as two app processes share one database. The
machine sends, retries with the same key, reuses a key for other content, interleaves chats and
fires bursts of concurrent senders on both instances; after every step it checks the invariants:

- every chat's stored sequences are exactly 1..head (no gap, no duplicate);
- one stored message per (sender, client_message_id), with the sequence its first send got;
- a retry answers with the original sequence and stores nothing;
- a reused key with other content is refused and stores nothing;
- delivery state only moves forward and never past head;
- group commit (ADR 0024): copies of a send inside one burst answer with one sequence, one copy
  stored, and a non-member in the burst is refused alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from messaging.domain.errors import IdempotencyKeyReused, NotFound
from messaging.domain.ids import new_user_id
from messaging.domain.model import SendResult
from messaging.durability.chats import ChatService
from messaging.durability.config import DurabilityConfig
from messaging.durability.ingest import IngestService
from messaging.durability.ports import MessageStore
from tests.contract.stores import TARGETS, open_store
from tests.fakes.durability import FakeUserDirectory

T = TypeVar("T")
CONFIG = DurabilityConfig()
TEXTS = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40
) | st.sampled_from(["👩‍👩‍👧‍👦", "שלום", "e\u0301", "<script>x</script>"])

# The reference transport (aioboto3) gets fewer examples: the transports differ only in how a call
# is made, which the other contract suites check in full for both.
EXAMPLES = {
    "fake": 60,
    "dynoxide-lean": 12,
    "moto-lean": 8,
    "dynoxide-aioboto3": 6,
    "moto-aioboto3": 4,
}


def machine_for(store: MessageStore, run: Any) -> type[RuleBasedStateMachine]:
    class DurabilityMachine(RuleBasedStateMachine):
        chats = Bundle("chats")
        sent = Bundle("sent")

        def __init__(self) -> None:
            super().__init__()
            # Fresh users per run: examples share the store, never a chat.
            self.users = [new_user_id() for _ in range(4)]
            directory = FakeUserDirectory(self.users)
            self.chat_service = ChatService(store, directory, CONFIG)
            self.processes = [IngestService(store, CONFIG), IngestService(store, CONFIG)]
            self.expected: dict[str, dict[tuple[str, str], tuple[int, str]]] = {}
            self.acked: dict[tuple[str, str], int] = {}
            self.counter = 0

        def _cmid(self) -> str:
            self.counter += 1
            return f"m{self.counter}"

        @initialize(target=chats)
        def first_chat(self) -> str:
            chat, _ = run(self.chat_service.create_direct(self.users[0], self.users[1]))
            self.expected.setdefault(chat.chat_id, {})
            return chat.chat_id

        @rule(target=chats, size=st.integers(min_value=2, max_value=4))
        def new_group(self, size: int) -> str:
            chat = run(self.chat_service.create_group(self.users[0], "g", self.users[1:size]))
            self.expected[chat.chat_id] = {}
            return chat.chat_id

        def _send(self, process: int, sender: str, chat_id: str, cmid: str, text: str) -> int:
            result = run(
                self.processes[process].send(
                    sender_id=sender,
                    sender_device="d",
                    chat_id=chat_id,
                    client_message_id=cmid,
                    text=text,
                )
            )
            return result.message.sequence

        @rule(
            target=sent,
            chat_id=chats,
            process=st.integers(0, 1),
            who=st.integers(0, 1),
            text=TEXTS,
        )
        def send(
            self, chat_id: str, process: int, who: int, text: str
        ) -> tuple[str, str, str, str]:
            sender = self.users[who]
            cmid = self._cmid()
            sequence = self._send(process, sender, chat_id, cmid, text)
            self.expected[chat_id][(sender, cmid)] = (sequence, text)
            return (chat_id, sender, cmid, text)

        @rule(previous=sent, process=st.integers(0, 1))
        def retry(self, previous: tuple[str, str, str, str], process: int) -> None:
            chat_id, sender, cmid, text = previous
            original, _ = self.expected[chat_id][(sender, cmid)]
            assert self._send(process, sender, chat_id, cmid, text) == original

        @rule(previous=sent, other=TEXTS)
        def reuse_key_for_other_text(self, previous: tuple[str, str, str, str], other: str) -> None:
            chat_id, sender, cmid, text = previous
            if other == text:
                return
            with pytest.raises(IdempotencyKeyReused):
                self._send(0, sender, chat_id, cmid, other)

        @rule(chat_id=chats, burst=st.integers(min_value=2, max_value=8))
        def concurrent_senders(self, chat_id: str, burst: int) -> None:
            """``burst`` sends at once, alternating processes; then every one retried at once
            on the other process: the retries must answer with the same sequences."""
            sends = [(i % 2, self.users[i % 2], self._cmid()) for i in range(burst)]

            async def fire(swap: int) -> list[int]:
                results = await asyncio.gather(
                    *(
                        self.processes[(process + swap) % 2].send(
                            sender_id=sender,
                            sender_device="d",
                            chat_id=chat_id,
                            client_message_id=cmid,
                            text=cmid,
                        )
                        for process, sender, cmid in sends
                    )
                )
                return [r.message.sequence for r in results]

            sequences = run(fire(0))
            assert run(fire(1)) == sequences
            for (_, sender, cmid), sequence in zip(sends, sequences, strict=True):
                self.expected[chat_id][(sender, cmid)] = (sequence, cmid)

        @rule(
            chat_id=chats,
            burst=st.integers(min_value=2, max_value=10),
            copies=st.lists(st.integers(min_value=0, max_value=19), max_size=4),
            stranger=st.booleans(),
        )
        def burst_with_duplicates(
            self, chat_id: str, burst: int, copies: list[int], stranger: bool
        ) -> None:
            """Group commit (ADR 0024): a burst into one chat on both processes, with copies of
            some sends in the same burst (on the same process: one batch; or on the other) and
            perhaps a sender who is not a member. Every copy answers with its original's
            sequence, exactly one copy of each key is stored, the stranger alone is refused."""
            sends = [(i % 2, self.users[i % 2], self._cmid()) for i in range(burst)]
            for copy in copies:
                process, sender, cmid = sends[copy % burst]
                sends.append(((process + copy // burst) % 2, sender, cmid))
            outsider = self.users[3]
            is_member = run(store.get_membership(chat_id, outsider)) is not None
            if stranger:
                sends.insert(burst // 2, (burst % 2, outsider, self._cmid()))

            async def fire() -> list[SendResult | BaseException]:
                return await asyncio.gather(
                    *(
                        self.processes[process].send(
                            sender_id=sender,
                            sender_device="d",
                            chat_id=chat_id,
                            client_message_id=cmid,
                            text=cmid,
                        )
                        for process, sender, cmid in sends
                    ),
                    return_exceptions=True,
                )

            answers: dict[tuple[str, str], list[SendResult]] = {}
            for (_, sender, cmid), result in zip(sends, run(fire()), strict=True):
                if sender == outsider and not is_member:
                    assert isinstance(result, NotFound), result
                    continue
                assert isinstance(result, SendResult), result
                answers.setdefault((sender, cmid), []).append(result)
            for (sender, cmid), results in answers.items():
                assert len({r.message.sequence for r in results}) == 1, results
                assert sum(not r.duplicate for r in results) == 1, results
                self.expected[chat_id][(sender, cmid)] = (results[0].message.sequence, cmid)

        @rule(chat_id=chats, who=st.integers(0, 1), back=st.integers(0, 3))
        def ack(self, chat_id: str, who: int, back: int) -> None:
            sender = self.users[who]
            head = len(self.expected[chat_id])
            target = max(0, head - back)
            stored = run(self.chat_service.ack(sender, chat_id, target))
            previous = self.acked.get((sender, chat_id), 0)
            assert stored == max(previous, target)
            self.acked[(sender, chat_id)] = stored

        @invariant()
        def sequences_are_gapless_and_unique(self) -> None:
            for chat_id, sends in self.expected.items():
                chat = run(store.get_chat(chat_id))
                assert chat is not None
                assert chat.head == len(sends)
                stored = run(store.read_messages(chat_id, 1, chat.head + 5, limit=chat.head + 5))
                assert [m.sequence for m in stored] == list(range(1, chat.head + 1))
                by_key = {(m.sender_id, m.client_message_id): (m.sequence, m.text) for m in stored}
                assert by_key == sends
                for (user, acked_chat), acked in self.acked.items():
                    if acked_chat == chat_id:
                        assert acked <= chat.head, user

    return DurabilityMachine


@pytest.mark.parametrize("target", TARGETS)
def test_durability_invariants_hold(target: str) -> None:
    loop = asyncio.new_event_loop()

    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        return loop.run_until_complete(coroutine)

    stack = AsyncExitStack()
    try:
        store = run(stack.enter_async_context(open_store(target)))
        run_state_machine_as_test(
            machine_for(store, run),
            settings=settings(
                max_examples=EXAMPLES[target],
                stateful_step_count=12,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
            ),
        )
    finally:
        run(stack.aclose())
        loop.close()
