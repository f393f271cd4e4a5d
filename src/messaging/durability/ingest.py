"""Message ingest: validate, de-duplicate, allocate the next sequence, persist, all at once.

The algorithm (ADR 0004):

1. A send is keyed by ``(sender, client_message_id)``. If that key was stored before, the
   original answer is returned (same sequence, ``duplicate=True``) and nothing is written; the
   same key with different content is refused (``idempotency_key_reused``).
2. Otherwise the next sequence is ``head + 1`` and ``store.try_append`` writes, in one
   transaction, the head increment (conditional on the head still being ``head``), the message
   and the idempotency record, checking the sender's membership in the same transaction.
3. If another writer moved the head first, re-read it and try again. Within one process, sends
   to one chat queue on a per-chat lock, so only writers on other processes ever race.

A sequence is therefore never taken without its message (no gap) and never twice (no
duplicate), whatever the concurrency and wherever a process dies: a transaction that did not
commit left nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from messaging.domain.errors import (
    IdempotencyKeyReused,
    MessagingError,
    NotAMember,
    Unavailable,
    chat_not_found,
)
from messaging.domain.ids import check_chat_id, check_client_message_id
from messaging.domain.model import (
    IdempotencyRecord,
    Message,
    SendResult,
    idempotency_key,
)
from messaging.domain.text import validate_text
from messaging.durability.config import DurabilityConfig
from messaging.durability.locks import KeyedLocks
from messaging.durability.ports import AppendOutcome, MessageStore
from messaging.protocol.faults import FaultPoint, FaultPoints, NoFaults


class PersistedSink(Protocol):
    """Takes each message right after it became durable (the outbox relay)."""

    def submit(self, message: Message) -> None: ...


class _Discard:
    def submit(self, message: Message) -> None:
        return None


class IngestService:
    def __init__(
        self,
        store: MessageStore,
        config: DurabilityConfig,
        *,
        sink: PersistedSink | None = None,
        faults: FaultPoints | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._sink: PersistedSink = sink or _Discard()
        self._faults: FaultPoints = faults or NoFaults()
        self._config = config
        self._clock = clock
        self._monotonic = monotonic
        self._locks = KeyedLocks()
        self._heads: OrderedDict[str, int] = OrderedDict()

    async def send(
        self, *, sender_id: str, sender_device: str, chat_id: str, client_message_id: str, text: str
    ) -> SendResult:
        check_chat_id(chat_id)
        check_client_message_id(client_message_id)
        digest = hashlib.sha256(validate_text(text, self._config.max_text_bytes)).hexdigest()
        key = idempotency_key(sender_id, client_message_id)

        existing = await self._store.get_idempotency(key)
        if existing is not None and existing.expires_at > self._clock():
            return await self._replay(existing, chat_id, digest)

        # Membership is decided by the append transaction itself (its ConditionCheck: a
        # non-member gets NOT_A_MEMBER and nothing is written), and a chat whose head this
        # process wrote exists (chats are never deleted; a stale head is HEAD_MOVED below), so
        # the common send is two round trips: this idempotency read and the transaction.
        known_head = self._heads.get(chat_id)
        if known_head is None:
            chat = await self._store.get_chat(chat_id)
            if chat is None:
                raise chat_not_found(chat_id)
            known_head = chat.head

        async with self._locks.hold(chat_id):
            head = max(known_head, self._heads.get(chat_id, 0))
            deadline = self._monotonic() + self._config.append_deadline_seconds
            attempt = 0
            while True:
                now = self._clock()
                message = Message(
                    chat_id=chat_id,
                    sequence=head + 1,
                    sender_id=sender_id,
                    sender_device=sender_device,
                    client_message_id=client_message_id,
                    text=text,
                    created_at_ms=int(now * 1000),
                )
                record = IdempotencyRecord(
                    sender_id=sender_id,
                    client_message_id=client_message_id,
                    chat_id=chat_id,
                    sequence=message.sequence,
                    text_sha256=digest,
                    expires_at=int(now) + self._config.idempotency_ttl_seconds,
                )
                outcome = await self._store.try_append(message, head, record)
                if outcome is AppendOutcome.APPENDED:
                    self._remember_head(chat_id, message.sequence)
                    self._faults.hit(FaultPoint.AFTER_PERSIST)
                    self._sink.submit(message)
                    return SendResult(message=message, duplicate=False)
                if outcome is AppendOutcome.DUPLICATE_KEY:
                    # The key was free when this send began: either a concurrent send with the
                    # same key won, or this very send committed on an attempt whose answer was
                    # lost (the store's retrier re-sent it). In the second case nobody handed
                    # the message to the relay yet; handing it over again costs at most a
                    # duplicate in the log (clients drop duplicates), not a 3 s sweeper delay.
                    stored = await self._store.get_idempotency(key)
                    if stored is None:
                        raise MessagingError(f"idempotency record {key} vanished during a send")
                    result = await self._replay(stored, chat_id, digest)
                    self._sink.submit(result.message)
                    return result
                if outcome is AppendOutcome.NOT_A_MEMBER:
                    if await self._store.get_membership(chat_id, sender_id) is None:
                        raise chat_not_found(chat_id)  # as for a chat that does not exist
                    raise NotAMember(f"you are no longer a member of chat {chat_id}")
                # HEAD_MOVED: a writer on another process got there first.
                attempt += 1
                if self._monotonic() > deadline:
                    raise Unavailable(
                        f"chat {chat_id} is too busy: no free sequence after {attempt} attempts; "
                        "retry with the same client_message_id"
                    )
                if attempt > 2:
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * 2**attempt)))
                fresh = await self._store.get_chat(chat_id)
                head = fresh.head if fresh is not None else head

    async def _replay(self, record: IdempotencyRecord, chat_id: str, digest: str) -> SendResult:
        if record.chat_id != chat_id or record.text_sha256 != digest:
            raise IdempotencyKeyReused(
                f"client_message_id {record.client_message_id!r} was already used for a "
                "different message; use a new client_message_id for new content"
            )
        stored = await self._store.read_messages(
            record.chat_id, record.sequence, record.sequence, limit=1
        )
        if not stored:
            raise MessagingError(f"message {record.chat_id}/{record.sequence} is missing")
        return SendResult(message=stored[0], duplicate=True)

    def _remember_head(self, chat_id: str, head: int) -> None:
        self._heads[chat_id] = head
        self._heads.move_to_end(chat_id)
        while len(self._heads) > self._config.head_cache_size:
            self._heads.popitem(last=False)
