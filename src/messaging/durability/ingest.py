"""Message ingest: validate, de-duplicate, allocate sequences, persist, all at once.

The algorithm (ADR 0004, group commit ADR 0024):

1. A send is keyed by ``(sender, client_message_id)``. If that key was stored before, the
   original answer is returned (same sequence, ``duplicate=True``) and nothing is written; the
   same key with different content is refused (``idempotency_key_reused``). A send into an
   idle chat reads the key first; one into a chat whose committer is busy does not, and the
   append transaction's key condition finds a stored key instead (step 3).
2. Otherwise the send joins its chat's queue. One committer per chat and process takes what
   is queued (at most :data:`DurabilityConfig.commit_max_messages` messages, within DynamoDB's
   100-item and 4 MB transaction limits) and ``store.append_batch`` writes it in one
   transaction: the head ``+= n`` (conditional on the head still being ``head``), each message,
   each idempotency record and outbox entry, and each sender's membership check. A send that
   arrives while a transaction is in flight goes into the next one, together with every other
   send that arrived meanwhile: a hot chat pays one transaction per batch, not per message. A
   lone send is a batch of one (the same code path).
3. A message whose own condition failed (its key stored meanwhile, its sender no longer a
   member) is answered on its own and the rest retried without it. If another writer moved
   the head first (another process), re-read it and try again, within the append deadline.
   Within one process only the committer writes a chat, so only writers on other processes
   ever race.

Each sender is answered only once the transaction holding its message committed. A sequence
is therefore never taken without its message (no gap) and never twice (no duplicate), whatever
the concurrency and wherever a process dies: a transaction that did not commit left nothing
behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Protocol

import attrs

from messaging.domain.errors import (
    IdempotencyKeyReused,
    MessagingError,
    NotAMember,
    StoreUnavailable,
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
from messaging.durability.locks import ChatQueues
from messaging.durability.ports import (
    TRANSACTION_MAX_BYTES,
    TRANSACTION_MAX_ITEMS,
    Append,
    AppendOutcome,
    HeadClaim,
    MessageStore,
    append_bytes,
)
from messaging.protocol.faults import FaultPoint, FaultPoints, NoFaults

log = logging.getLogger(__name__)

CLAIM_AFTER_LOST_RACES = 2
"""A batch that lost the head race this many times claims the chat's next append (ADR 0034)."""
CLAIM_POLL_SECONDS = 0.05
"""How often a writer that found another's claim tries again."""
CONTENDED_SECONDS = 5.0
"""After claiming a chat, its next batches claim it before their first attempt for this long."""


class PersistedSink(Protocol):
    """Takes each message right after it became durable (the outbox relay)."""

    def submit(self, message: Message) -> None: ...


class _Discard:
    def submit(self, message: Message) -> None:
        return None


@attrs.define(eq=False)
class _Send:
    """One send waiting for its chat's committer."""

    sender_id: str
    sender_device: str
    chat_id: str
    client_message_id: str
    text: str
    digest: str
    known_head: int
    answer: asyncio.Future[SendResult]
    proposed: set[tuple[int, int]] = attrs.field(factory=set)
    """(sequence, created_at_ms) of the message each append attempt of this send proposed."""

    @property
    def key(self) -> str:
        return idempotency_key(self.sender_id, self.client_message_id)

    def settle(self, result: SendResult | BaseException) -> None:
        if self.answer.done():  # the sender went away (its connection closed)
            return
        if isinstance(result, BaseException):
            self.answer.set_exception(result)
        else:
            self.answer.set_result(result)


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
        self._queues: ChatQueues[_Send] = ChatQueues(config.commit_queue_limit, self._commit_loop)
        self._heads: OrderedDict[str, int] = OrderedDict()
        self._contended: OrderedDict[str, float] = OrderedDict()
        """Chats this process had to claim, until when it claims them first (ADR 0034)."""
        self._writer = uuid.uuid4().hex
        """Names this process's committers in head claims (ADR 0034)."""

    async def send(
        self, *, sender_id: str, sender_device: str, chat_id: str, client_message_id: str, text: str
    ) -> SendResult:
        """Store one send, answered within ``append_deadline_seconds`` of its call (ADR 0034):
        a send queued behind a slow batch, or whose reads do not answer, is refused with
        ``store_unavailable`` at its own deadline, not after the batches ahead of it. Such a
        send may still commit; the same ``client_message_id`` then answers it as a duplicate."""
        deadline = self._config.append_deadline_seconds
        try:
            async with asyncio.timeout(deadline):
                return await self._send(
                    sender_id=sender_id,
                    sender_device=sender_device,
                    chat_id=chat_id,
                    client_message_id=client_message_id,
                    text=text,
                )
        except TimeoutError:
            raise StoreUnavailable(
                f"the message store did not store the send within {deadline:g}s; "
                "retry with the same client_message_id"
            ) from None

    async def _send(
        self, *, sender_id: str, sender_device: str, chat_id: str, client_message_id: str, text: str
    ) -> SendResult:
        check_chat_id(chat_id)
        check_client_message_id(client_message_id)
        digest = hashlib.sha256(validate_text(text, self._config.max_text_bytes)).hexdigest()

        # The key: the transaction decides it (its idempotency Put is conditional: a key stored
        # and not expired fails it with DUPLICATE_KEY, nothing is written, and the send is
        # answered from the stored record, ``_rejected``). A send to an idle chat first reads
        # it, so that a client's retry is answered without a transaction; a send to a chat
        # whose committer is busy (a hot chat) does not: it waits for the transaction in
        # flight anyway, and the read would be one more store call per message (ADR 0024,
        # amended 2026-12-02).
        if not self._queues.busy(chat_id):
            existing = await self._store.get_idempotency(
                idempotency_key(sender_id, client_message_id)
            )
            if existing is not None and existing.expires_at > self._clock():
                return await self._replay(existing, chat_id, digest)

        # Membership is decided by the append transaction itself (its ConditionCheck: a
        # non-member gets NOT_A_MEMBER and nothing is written), and a chat whose head this
        # process wrote exists (chats are never deleted; a stale head is a moved head below),
        # so a send is at most two round trips: the idempotency read and the transaction.
        known_head = self._heads.get(chat_id)
        if known_head is None:
            chat = await self._store.get_chat(chat_id)
            if chat is None:
                raise chat_not_found(chat_id)
            known_head = chat.head

        send = _Send(
            sender_id=sender_id,
            sender_device=sender_device,
            chat_id=chat_id,
            client_message_id=client_message_id,
            text=text,
            digest=digest,
            known_head=known_head,
            answer=asyncio.get_running_loop().create_future(),
        )
        if not self._queues.put(chat_id, send):
            raise Unavailable(
                f"chat {chat_id} is too busy: too many sends waiting; "
                "retry with the same client_message_id"
            )
        return await send.answer

    async def close(self) -> None:
        """Shutdown: let every committer finish the transaction in flight (its messages reach
        the relay), then answer what still waits with a retriable error."""
        await self._queues.close(
            lambda send: send.settle(Unavailable("the server is shutting down; retry"))
        )

    @property
    def committers(self) -> int:
        """Chats with a committer task right now (none when idle)."""
        return len(self._queues)

    # ------------------------------------------------------------------ the committer

    async def _commit_loop(self, chat_id: str, queue: deque[_Send]) -> None:
        """The chat's committer: one transaction at a time, each taking what queued."""
        while queue:
            batch = self._take(queue)
            if not batch:
                continue
            try:
                await self._commit(chat_id, batch)
            except Exception as exc:  # answered to every sender of the batch
                error = exc if isinstance(exc, MessagingError) else None
                if error is None:
                    log.exception("append to chat %s failed", chat_id)
                    error = Unavailable("the message store failed; retry")
                for send in batch:
                    send.settle(error)

    def _take(self, queue: deque[_Send]) -> list[_Send]:
        """The next batch: queued sends in arrival order, within the batch caps. A send whose
        key is already in the batch stays, and is answered from its first copy."""
        batch: list[_Send] = []
        senders: set[str] = set()
        size = 0
        max_bytes = min(self._config.commit_max_bytes, TRANSACTION_MAX_BYTES)
        while queue and len(batch) < self._config.commit_max_messages:
            send = queue[0]
            if send.answer.done():  # its sender went away before it was written
                queue.popleft()
                continue
            items = 1 + 3 * (len(batch) + 1) + len(senders | {send.sender_id})
            cost = append_bytes(self._append(send, 0, 0.0))
            if batch and (items > TRANSACTION_MAX_ITEMS or size + cost > max_bytes):
                break
            queue.popleft()
            batch.append(send)
            senders.add(send.sender_id)
            size += cost
        return batch

    async def _commit(self, chat_id: str, batch: list[_Send]) -> None:
        # Duplicates inside the batch: the first send of each key is written, the others are
        # answered from it once it is settled.
        firsts: dict[str, _Send] = {}
        copies: list[_Send] = []
        for send in batch:
            if send.key in firsts:
                copies.append(send)
            else:
                firsts[send.key] = send
        pending = list(firsts.values())
        try:
            await self._append_all(chat_id, pending)
        finally:
            for copy in copies:
                await self._answer_copy(copy, firsts[copy.key])

    async def _append_all(self, chat_id: str, pending: list[_Send]) -> None:
        head = max([self._heads.get(chat_id, 0), *(s.known_head for s in pending)])
        deadline = self._monotonic() + self._config.append_deadline_seconds
        attempt = 0
        # A chat this process had to claim lately is claimed before the first attempt: a
        # slow writer then pays two round trips per batch, not two lost races and two more.
        holding = False
        contended = self._contended.get(chat_id, 0.0) > self._monotonic()
        aside: list[tuple[_Send, AppendOutcome]] = []
        try:
            if contended:
                claim = await self._claim(chat_id)
                if claim is not None:
                    head, holding = max(head, claim.head), claim.claimed
            while pending:
                now = self._clock()
                appends = [self._append(s, head + i, now) for i, s in enumerate(pending, 1)]
                for send, append in zip(pending, appends, strict=True):
                    send.proposed.add((append.message.sequence, append.message.created_at_ms))
                outcome = await self._store.append_batch(
                    chat_id, head, appends, writer=self._writer, now_ms=int(now * 1000)
                )
                if outcome.appended:
                    self._settle_appended(chat_id, head, pending, appends)
                    return
                if outcome.rejected:
                    # One bad message must not fail the others: set it aside, retry the rest.
                    pending, rejected = _split_rejected(pending, outcome.rejected)
                    aside += rejected
                    if not outcome.head_moved:
                        continue
                # The head moved: a writer on another process got there first.
                attempt += 1
                if self._monotonic() > deadline:
                    raise Unavailable(
                        f"chat {chat_id} is too busy: no free sequence after {attempt} "
                        "attempts; retry with the same client_message_id"
                    )
                if outcome.claimed_until_ms is not None:
                    # Another writer claimed the next append (ADR 0034): its turn first.
                    head = outcome.head if outcome.head is not None else head
                    await self._await_claim(outcome.claimed_until_ms)
                    continue
                if attempt >= CLAIM_AFTER_LOST_RACES and not holding:
                    # Losing again and again (a slower path to the store than the other
                    # writers'): claim the next append, so that they wait for this one.
                    claim = await self._claim(chat_id)
                    if claim is not None:
                        head, holding = claim.head, claim.claimed
                        if not holding:
                            await self._await_claim(claim.until_ms)
                        continue
                if outcome.head is not None and outcome.head > head:
                    # The store named the head that won (ADR 0034): retry at once, one round
                    # trip per attempt instead of a read and a write.
                    head = outcome.head
                    continue
                if attempt > 2:
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * 2**attempt)))
                fresh = await self._store.get_chat(chat_id)
                head = fresh.head if fresh is not None else head
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else Unavailable("cancelled; retry")
            for send in pending:
                send.settle(error)
            raise
        finally:
            if aside:
                await asyncio.gather(*(self._answer_rejected(s, o) for s, o in aside))

    def _settle_appended(
        self, chat_id: str, head: int, pending: list[_Send], appends: list[Append]
    ) -> None:
        self._remember_head(chat_id, head + len(appends))
        self._faults.hit(FaultPoint.AFTER_PERSIST)
        for send, append in zip(pending, appends, strict=True):
            self._sink.submit(append.message)
            send.settle(SendResult(message=append.message, duplicate=False))

    async def _claim(self, chat_id: str) -> HeadClaim | None:
        now_ms = int(self._clock() * 1000)
        claim = await self._store.claim_head(
            chat_id, self._writer, now_ms, now_ms + int(self._config.head_claim_seconds * 1000)
        )
        self._contended[chat_id] = self._monotonic() + CONTENDED_SECONDS
        self._contended.move_to_end(chat_id)
        while len(self._contended) > self._config.head_cache_size:
            self._contended.popitem(last=False)
        return claim

    async def _await_claim(self, until_ms: int) -> None:
        """Wait while another writer holds the chat's head claim: until it lapses, looking
        again every :data:`CLAIM_POLL_SECONDS` (its append clears it sooner)."""
        left = until_ms / 1000 - self._clock()
        await asyncio.sleep(min(max(left, 0.001), CLAIM_POLL_SECONDS))

    async def _answer_rejected(self, send: _Send, outcome: AppendOutcome) -> None:
        try:
            send.settle(await self._rejected(send, outcome))
        except MessagingError as exc:
            send.settle(exc)
        except Exception:  # a store failure while answering one send
            log.exception("answering a refused send to chat %s failed", send.chat_id)
            send.settle(Unavailable("the message store failed; retry"))

    async def _rejected(self, send: _Send, outcome: AppendOutcome) -> SendResult:
        if outcome is AppendOutcome.NOT_A_MEMBER:
            if await self._store.get_membership(send.chat_id, send.sender_id) is None:
                raise chat_not_found(send.chat_id)  # as for a chat that does not exist
            raise NotAMember(f"you are no longer a member of chat {send.chat_id}")
        # DUPLICATE_KEY: the key was stored before (a client's retry into a busy chat: the
        # original answer), or while this send waited (a concurrent send with the same key
        # won), or by this very
        # send on an attempt whose answer was lost (the store's retrier re-sent it). In the
        # last case (the stored message is one this send proposed) nobody handed it to the
        # relay yet: it goes there now (instead of a 3 s sweeper delay); in the others the
        # writer of the stored message handed it over.
        stored = await self._store.get_idempotency(send.key)
        if stored is None:
            raise MessagingError(f"idempotency record {send.key} vanished during a send")
        result = await self._replay(stored, send.chat_id, send.digest)
        if (result.message.sequence, result.message.created_at_ms) in send.proposed:
            self._sink.submit(result.message)
        return result

    async def _answer_copy(self, copy: _Send, first: _Send) -> None:
        """A second send of a key that was in the same batch: the same answer as the first
        (a duplicate of it), or refused if its content differs."""
        if not first.answer.done() or first.answer.cancelled():
            # Its first copy's sender went away before an answer: ask the store.
            await self._answer_from_store(copy)
            return
        error = first.answer.exception()
        if error is not None:
            if copy.digest == first.digest:
                copy.settle(error)
            else:
                await self._answer_from_store(copy)
            return
        result = first.answer.result()
        if copy.digest != first.digest:
            copy.settle(
                IdempotencyKeyReused(
                    f"client_message_id {copy.client_message_id!r} was already used for a "
                    "different message; use a new client_message_id for new content"
                )
            )
        else:
            copy.settle(SendResult(message=result.message, duplicate=True))

    async def _answer_from_store(self, send: _Send) -> None:
        try:
            stored = await self._store.get_idempotency(send.key)
            if stored is None:
                send.settle(Unavailable("the send did not complete; retry"))
            else:
                send.settle(await self._replay(stored, send.chat_id, send.digest))
        except MessagingError as exc:
            send.settle(exc)

    def _append(self, send: _Send, sequence: int, now: float) -> Append:
        message = Message(
            chat_id=send.chat_id,
            sequence=sequence,
            sender_id=send.sender_id,
            sender_device=send.sender_device,
            client_message_id=send.client_message_id,
            text=send.text,
            created_at_ms=int(now * 1000),
        )
        record = IdempotencyRecord(
            sender_id=send.sender_id,
            client_message_id=send.client_message_id,
            chat_id=send.chat_id,
            sequence=sequence,
            text_sha256=send.digest,
            expires_at=int(now) + self._config.idempotency_ttl_seconds,
        )
        return Append(message, record)

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


def _split_rejected(
    pending: list[_Send], rejected: Mapping[int, AppendOutcome]
) -> tuple[list[_Send], list[tuple[_Send, AppendOutcome]]]:
    """The sends of a batch to retry, and those set aside with their answer: each one the
    store rejected (by index), and every other send of a sender it found not a member."""
    outsiders = {
        pending[i].sender_id for i, o in rejected.items() if o is AppendOutcome.NOT_A_MEMBER
    }
    keep: list[_Send] = []
    aside: list[tuple[_Send, AppendOutcome]] = []
    for index, send in enumerate(pending):
        outcome = rejected.get(index)
        if outcome is None and send.sender_id in outsiders:
            outcome = AppendOutcome.NOT_A_MEMBER
        if outcome is None:
            keep.append(send)
        else:
            aside.append((send, outcome))
    return keep, aside
