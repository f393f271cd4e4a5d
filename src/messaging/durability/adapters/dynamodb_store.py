"""``MessageStore`` on the DynamoDB API (AWS, dynoxide or moto: the same code).

Every call goes through the :class:`~messaging.infra.dynamodb.Retrier` (throttling and transient
errors retried with backoff and jitter within a deadline). Conditional failures are outcomes, not
errors; any other refusal (a :class:`~messaging.infra.dynamodb.DynamoError` that is not
retriable) becomes a permanent :class:`~messaging.domain.errors.MessagingError` here, which the
gateway answers with an error frame: no vendor or transport exception crosses the port. Reads
that decide a write are strongly consistent. Attribute names in expressions are always
placeholders (``#n``), since DynamoDB reserves hundreds of words.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from messaging.domain.errors import MessagingError
from messaging.domain.model import Chat, ChatKind, IdempotencyRecord, Membership, Message
from messaging.durability.ports import (
    Append,
    AppendOutcome,
    BatchOutcome,
    HeadClaim,
    OutboxEntry,
    RemoveOutcome,
    check_batch,
    single_outcome,
)
from messaging.infra.dynamodb import DynamoClient, DynamoError, Retrier, batch_get, batch_write
from messaging.infra.schema import (
    CHAT_MEMBERSHIPS,
    CHATS,
    DELIVERY_STATE,
    IDEMPOTENCY_KEYS,
    MESSAGES,
    OUTBOX,
    table_name,
)

Item = dict[str, Any]
T = TypeVar("T")
OUTBOX_SHARDS = 4
"""Outbox entries are spread over this many partition keys (no single hot partition)."""


def outbox_shard(chat_id: str) -> str:
    return f"s{zlib.crc32(chat_id.encode()) % OUTBOX_SHARDS}"


def outbox_key(entry: OutboxEntry) -> Item:
    return {
        "shard": _s(outbox_shard(entry.chat_id)),
        "entry": _s(f"{entry.created_at_ms:013d}#{entry.chat_id}#{entry.sequence:012d}"),
    }


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _int(item: Item, name: str, default: int = 0) -> int:
    return int(item[name]["N"]) if name in item else default


def refused(what: str, exc: DynamoError) -> MessagingError:
    """A refusal no retry can fix (a validation error, a missing table...): permanent."""
    return MessagingError(f"the message store refused {what}: {exc.code}")


async def _refusing(what: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except DynamoError as exc:
        raise refused(what, exc) from exc


async def _run(retrier: Retrier, what: str, operation: Callable[[], Awaitable[T]]) -> T:
    """``operation`` under the retrier; a non-retriable refusal made a domain error."""
    return await _refusing(what, retrier.run(what, operation))


def chat_from_item(item: Item) -> Chat:
    return Chat(
        chat_id=item["chat_id"]["S"],
        kind=ChatKind(item["kind"]["S"]),
        title=item.get("title", {"S": ""})["S"],
        created_by=item["created_by"]["S"],
        created_at_ms=_int(item, "created_at_ms"),
        head=_int(item, "head"),
        last_message_at_ms=_int(item, "last_message_at_ms"),
    )


def membership_from_item(item: Item) -> Membership:
    return Membership(
        chat_id=item["chat_id"]["S"],
        user_id=item["user_id"]["S"],
        joined_seq=_int(item, "joined_seq"),
        removed_seq=_int(item, "removed_seq") if "removed_seq" in item else None,
    )


def message_item(message: Message) -> Item:
    return {
        "chat_id": _s(message.chat_id),
        "sequence": _n(message.sequence),
        "sender_id": _s(message.sender_id),
        "sender_device": _s(message.sender_device),
        "client_message_id": _s(message.client_message_id),
        "text": _s(message.text),
        "created_at_ms": _n(message.created_at_ms),
    }


def message_from_item(item: Item) -> Message:
    return Message(
        chat_id=item["chat_id"]["S"],
        sequence=_int(item, "sequence"),
        sender_id=item["sender_id"]["S"],
        sender_device=item["sender_device"]["S"],
        client_message_id=item["client_message_id"]["S"],
        text=item["text"]["S"],
        created_at_ms=_int(item, "created_at_ms"),
    )


class DynamoMessageStore:
    def __init__(self, client: DynamoClient, table_prefix: str, retrier: Retrier) -> None:
        self._client = client
        self._retry = retrier
        self.chats = table_name(table_prefix, CHATS)
        self.memberships = table_name(table_prefix, CHAT_MEMBERSHIPS)
        self.messages = table_name(table_prefix, MESSAGES)
        self.delivery = table_name(table_prefix, DELIVERY_STATE)
        self.idempotency = table_name(table_prefix, IDEMPOTENCY_KEYS)
        self.outbox = table_name(table_prefix, OUTBOX)

    # ------------------------------------------------------------------ chats

    async def get_chat(self, chat_id: str) -> Chat | None:
        answer = await _run(
            self._retry,
            "GetItem chats",
            lambda: self._client.get_item(
                TableName=self.chats, Key={"chat_id": _s(chat_id)}, ConsistentRead=True
            ),
        )
        item = answer.get("Item")
        return chat_from_item(item) if item else None

    async def get_chats(self, chat_ids: Sequence[str]) -> dict[str, Chat]:
        keys = [{"chat_id": _s(c)} for c in dict.fromkeys(chat_ids)]
        items = await _refusing(
            "BatchGetItem chats", batch_get(self._client, self._retry, self.chats, keys)
        )
        return {item["chat_id"]["S"]: chat_from_item(item) for item in items}

    async def create_chat(self, chat: Chat, members: Sequence[Membership]) -> tuple[Chat, bool]:
        # Members first, the chat item last and conditionally: a chat becomes visible only once
        # complete. A crash in between leaves memberships of a chat that does not exist, which
        # every read skips (and a retry of a 1:1 creation completes).
        await _refusing(
            "BatchWriteItem chat_memberships",
            batch_write(
                self._client,
                self._retry,
                self.memberships,
                [{"PutRequest": {"Item": self._membership_item(m)}} for m in members],
            ),
        )
        item: Item = {
            "chat_id": _s(chat.chat_id),
            "kind": _s(chat.kind.value),
            "title": _s(chat.title),
            "created_by": _s(chat.created_by),
            "created_at_ms": _n(chat.created_at_ms),
            "head": _n(0),
            "last_message_at_ms": _n(0),
        }
        try:
            await self._retry.run(
                "PutItem chats",
                lambda: self._client.put_item(
                    TableName=self.chats,
                    Item=item,
                    ConditionExpression="attribute_not_exists(#id)",
                    ExpressionAttributeNames={"#id": "chat_id"},
                ),
            )
        except DynamoError as exc:
            if exc.code != "ConditionalCheckFailedException":
                raise refused("PutItem chats", exc) from exc
            existing = await self.get_chat(chat.chat_id)
            assert existing is not None, "a chat that failed attribute_not_exists must exist"
            return existing, False
        return chat, True

    # ------------------------------------------------------------------ memberships

    @staticmethod
    def _membership_item(membership: Membership) -> Item:
        item: Item = {
            "chat_id": _s(membership.chat_id),
            "user_id": _s(membership.user_id),
            "joined_seq": _n(membership.joined_seq),
        }
        if membership.removed_seq is not None:
            item["removed_seq"] = _n(membership.removed_seq)
        return item

    async def get_membership(self, chat_id: str, user_id: str) -> Membership | None:
        answer = await _run(
            self._retry,
            "GetItem chat_memberships",
            lambda: self._client.get_item(
                TableName=self.memberships,
                Key={"chat_id": _s(chat_id), "user_id": _s(user_id)},
                ConsistentRead=True,
            ),
        )
        item = answer.get("Item")
        return membership_from_item(item) if item else None

    async def list_members(self, chat_id: str) -> list[Membership]:
        items = await self._query_all(
            TableName=self.memberships,
            KeyConditionExpression="#c = :c",
            ExpressionAttributeNames={"#c": "chat_id"},
            ExpressionAttributeValues={":c": _s(chat_id)},
            ConsistentRead=True,
        )
        return [m for m in map(membership_from_item, items) if m.active]

    async def list_memberships_of(self, user_id: str) -> list[Membership]:
        # Global secondary indexes are eventually consistent on AWS: a chat created a moment
        # ago may be missing from this list for a moment (ADR 0004).
        items = await self._query_all(
            TableName=self.memberships,
            IndexName="by_user",
            KeyConditionExpression="#u = :u",
            ExpressionAttributeNames={"#u": "user_id"},
            ExpressionAttributeValues={":u": _s(user_id)},
        )
        return [m for m in map(membership_from_item, items) if m.active]

    async def put_membership(self, membership: Membership) -> None:
        item = self._membership_item(membership)
        await _run(
            self._retry,
            "PutItem chat_memberships",
            lambda: self._client.put_item(TableName=self.memberships, Item=item),
        )

    async def remove_membership(
        self, chat_id: str, user_id: str, expected_head: int
    ) -> RemoveOutcome:
        try:
            await self._retry.run(
                "TransactWriteItems remove member",
                lambda: self._client.transact_write_items(
                    TransactItems=[
                        {
                            "ConditionCheck": {
                                "TableName": self.chats,
                                "Key": {"chat_id": _s(chat_id)},
                                "ConditionExpression": "#h = :h",
                                "ExpressionAttributeNames": {"#h": "head"},
                                "ExpressionAttributeValues": {":h": _n(expected_head)},
                            }
                        },
                        {
                            "Update": {
                                "TableName": self.memberships,
                                "Key": {"chat_id": _s(chat_id), "user_id": _s(user_id)},
                                "UpdateExpression": "SET #r = :h",
                                "ConditionExpression": (
                                    "attribute_exists(#u) AND attribute_not_exists(#r)"
                                ),
                                "ExpressionAttributeNames": {"#r": "removed_seq", "#u": "user_id"},
                                "ExpressionAttributeValues": {":h": _n(expected_head)},
                            }
                        },
                    ]
                ),
            )
        except DynamoError as exc:
            if exc.code != "TransactionCanceledException":
                raise refused("TransactWriteItems remove member", exc) from exc
            codes = exc.cancellation_codes
            if len(codes) > 1 and codes[1] == "ConditionalCheckFailed":
                return RemoveOutcome.NOT_A_MEMBER
            return RemoveOutcome.HEAD_MOVED
        return RemoveOutcome.REMOVED

    # ------------------------------------------------------------------ messages

    async def get_idempotency(self, key: str) -> IdempotencyRecord | None:
        answer = await _run(
            self._retry,
            "GetItem idempotency_keys",
            lambda: self._client.get_item(
                TableName=self.idempotency, Key={"key": _s(key)}, ConsistentRead=True
            ),
        )
        item = answer.get("Item")
        if not item:
            return None
        return IdempotencyRecord(
            sender_id=item["sender_id"]["S"],
            client_message_id=item["client_message_id"]["S"],
            chat_id=item["chat_id"]["S"],
            sequence=_int(item, "sequence"),
            text_sha256=item["text_sha256"]["S"],
            expires_at=_int(item, "expires_at"),
        )

    async def try_append(
        self, message: Message, expected_head: int, record: IdempotencyRecord
    ) -> AppendOutcome:
        outcome = await self.append_batch(message.chat_id, expected_head, [Append(message, record)])
        return single_outcome(outcome)

    async def append_batch(
        self,
        chat_id: str,
        expected_head: int,
        appends: Sequence[Append],
        *,
        writer: str = "",
        now_ms: int = 0,
    ) -> BatchOutcome:
        """One ``TransactWriteItems`` (ADR 0024): the head update at index 0, then per message
        its Put, its idempotency Put and its outbox Put (indexes ``1 + 3i .. 3 + 3i``), then
        one membership ConditionCheck per distinct sender."""
        check_batch(chat_id, expected_head, appends)
        transaction: list[Any] = [
            _head_update(
                self.chats,
                chat_id,
                expected_head,
                len(appends),
                at_ms=appends[-1].message.created_at_ms,
                writer=writer,
                now_ms=now_ms,
            )
        ]
        for append in appends:
            transaction.extend(self._append_items(append.message, append.record))
        senders = list(dict.fromkeys(a.message.sender_id for a in appends))
        transaction += [
            {
                "ConditionCheck": {
                    "TableName": self.memberships,
                    "Key": {"chat_id": _s(chat_id), "user_id": _s(sender)},
                    "ConditionExpression": "attribute_exists(#u) AND attribute_not_exists(#r)",
                    "ExpressionAttributeNames": {"#u": "user_id", "#r": "removed_seq"},
                }
            }
            for sender in senders
        ]
        reasons = await self._transact("TransactWriteItems append", transaction)
        if reasons is None:
            return BatchOutcome()
        return _batch_outcome(reasons, appends, senders, writer=writer, now_ms=now_ms)

    async def claim_head(
        self, chat_id: str, writer: str, now_ms: int, until_ms: int
    ) -> HeadClaim | None:
        request = {
            "TableName": self.chats,
            "Key": {"chat_id": _s(chat_id)},
            "UpdateExpression": "SET #cw = :me, #cu = :until",
            "ConditionExpression": (
                "attribute_exists(#c) AND (attribute_not_exists(#cw) OR #cw = :me OR #cu < :clock)"
            ),
            "ExpressionAttributeNames": {
                "#c": "chat_id",
                "#cw": "claim_writer",
                "#cu": "claim_until_ms",
            },
            "ExpressionAttributeValues": {
                ":me": _s(writer),
                ":until": _n(until_ms),
                ":clock": _n(now_ms),
            },
            "ReturnValues": "ALL_NEW",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        try:
            answer = await self._retry.run(
                "UpdateItem claim", lambda: self._client.update_item(**request)
            )
        except DynamoError as exc:
            if exc.code != "ConditionalCheckFailedException":
                raise refused("UpdateItem claim", exc) from exc
            if not exc.item:
                return None
            return HeadClaim(
                head=_int(exc.item, "head"),
                claimed=False,
                until_ms=int(exc.item.get("claim_until_ms", {}).get("N", 0)),
            )
        return HeadClaim(head=_int(answer["Attributes"], "head"), claimed=True, until_ms=until_ms)

    def _append_items(self, message: Message, record: IdempotencyRecord) -> list[Any]:
        outbox_item = outbox_key(
            OutboxEntry(message.chat_id, message.sequence, message.created_at_ms)
        )
        outbox_item["chat_id"] = _s(message.chat_id)
        outbox_item["sequence"] = _n(message.sequence)
        return [
            {
                "Put": {
                    "TableName": self.messages,
                    "Item": message_item(message),
                    "ConditionExpression": "attribute_not_exists(#c)",
                    "ExpressionAttributeNames": {"#c": "chat_id"},
                }
            },
            {
                "Put": {
                    "TableName": self.idempotency,
                    "Item": {
                        "key": _s(record.key),
                        "sender_id": _s(record.sender_id),
                        "client_message_id": _s(record.client_message_id),
                        "chat_id": _s(record.chat_id),
                        "sequence": _n(record.sequence),
                        "text_sha256": _s(record.text_sha256),
                        "expires_at": _n(record.expires_at),
                    },
                    # An expired record (TTL deletion is lazy) may be replaced.
                    "ConditionExpression": "attribute_not_exists(#k) OR #e < :now",
                    "ExpressionAttributeNames": {"#k": "key", "#e": "expires_at"},
                    "ExpressionAttributeValues": {":now": _n(message.created_at_ms // 1000)},
                }
            },
            {"Put": {"TableName": self.outbox, "Item": outbox_item}},
        ]

    async def _transact(self, what: str, items: list[Any]) -> list[dict[str, Any]] | None:
        """Run one ``TransactWriteItems``: ``None`` when it committed, else the cancellation
        reason of each item (``Code`` "None" for an item that was fine, ``Item`` where one
        was asked for). The one place that turns the SDK's cancellation error into an
        outcome."""
        try:
            await self._retry.run(
                what, lambda: self._client.transact_write_items(TransactItems=items)
            )
        except DynamoError as exc:
            if exc.code != "TransactionCanceledException":
                raise refused(what, exc) from exc
            reasons = exc.cancellation_reasons
            return reasons if reasons else [{"Code": "None"} for _ in items]
        return None

    async def read_messages(
        self, chat_id: str, low: int, high: int, *, limit: int, descending: bool = False
    ) -> list[Message]:
        if low > high or limit <= 0:
            return []
        items = await self._query_all(
            TableName=self.messages,
            KeyConditionExpression="#c = :c AND #s BETWEEN :low AND :high",
            ExpressionAttributeNames={"#c": "chat_id", "#s": "sequence"},
            ExpressionAttributeValues={":c": _s(chat_id), ":low": _n(low), ":high": _n(high)},
            ScanIndexForward=not descending,
            ConsistentRead=True,
            limit=limit,
        )
        return [message_from_item(item) for item in items]

    # ------------------------------------------------------------------ delivery state

    async def get_last_acked(self, user_id: str, chat_ids: Sequence[str]) -> dict[str, int]:
        keys = [{"user_id": _s(user_id), "chat_id": _s(c)} for c in dict.fromkeys(chat_ids)]
        items = await _refusing(
            "BatchGetItem delivery_state", batch_get(self._client, self._retry, self.delivery, keys)
        )
        return {item["chat_id"]["S"]: _int(item, "last_acked_sequence") for item in items}

    async def advance_last_acked(self, user_id: str, chat_id: str, sequence: int) -> int:
        key = {"user_id": _s(user_id), "chat_id": _s(chat_id)}
        try:
            answer = await self._retry.run(
                "UpdateItem delivery_state",
                lambda: self._client.update_item(
                    TableName=self.delivery,
                    Key=key,
                    UpdateExpression="SET #a = :s",
                    ConditionExpression="attribute_not_exists(#a) OR #a < :s",
                    ExpressionAttributeNames={"#a": "last_acked_sequence"},
                    ExpressionAttributeValues={":s": _n(sequence)},
                    ReturnValues="UPDATED_NEW",
                ),
            )
            return _int(answer["Attributes"], "last_acked_sequence")
        except DynamoError as exc:
            if exc.code != "ConditionalCheckFailedException":
                raise refused("UpdateItem delivery_state", exc) from exc
        current = await _run(
            self._retry,
            "GetItem delivery_state",
            lambda: self._client.get_item(TableName=self.delivery, Key=key, ConsistentRead=True),
        )
        return _int(current.get("Item", {}), "last_acked_sequence")

    # ------------------------------------------------------------------ helpers

    async def _query_all(self, *, limit: int | None = None, **request: Any) -> list[Item]:
        items: list[Item] = []
        while True:
            if limit is not None:
                request["Limit"] = limit - len(items)
            page = await _run(
                self._retry, f"Query {request['TableName']}", lambda: self._client.query(**request)
            )
            items.extend(page.get("Items", []))
            last = page.get("LastEvaluatedKey")
            if not last or (limit is not None and len(items) >= limit):
                return items
            request["ExclusiveStartKey"] = last


class DynamoOutbox:
    """The ``outbox`` table: entries written by ``append_batch``, cleared after publishing."""

    def __init__(self, client: DynamoClient, table_prefix: str, retrier: Retrier) -> None:
        self._client = client
        self._retry = retrier
        self.table = table_name(table_prefix, OUTBOX)

    async def pending(self, created_before_ms: int, limit: int) -> list[OutboxEntry]:
        found: list[OutboxEntry] = []
        for shard in range(OUTBOX_SHARDS):
            request: dict[str, Any] = {
                "TableName": self.table,
                "KeyConditionExpression": "#s = :s AND #e < :before",
                "ExpressionAttributeNames": {"#s": "shard", "#e": "entry"},
                "ExpressionAttributeValues": {
                    ":s": _s(f"s{shard}"),
                    ":before": _s(f"{created_before_ms:013d}"),
                },
                "Limit": limit,
                "ConsistentRead": True,
            }
            page = await _run(
                self._retry,
                "Query outbox",
                lambda request=request: self._client.query(**request),  # type: ignore[misc]
            )
            for item in page.get("Items", []):
                created, chat_id, sequence = item["entry"]["S"].split("#")
                found.append(OutboxEntry(chat_id, int(sequence), int(created)))
        found.sort(key=lambda e: (e.created_at_ms, e.chat_id, e.sequence))
        return found[:limit]

    async def clear(self, entries: Sequence[OutboxEntry]) -> None:
        await _refusing(
            "BatchWriteItem outbox",
            batch_write(
                self._client,
                self._retry,
                self.table,
                [{"DeleteRequest": {"Key": outbox_key(entry)}} for entry in entries],
            ),
        )


def _head_update(
    table: str, chat_id: str, expected: int, count: int, *, at_ms: int, writer: str, now_ms: int
) -> dict[str, Any]:
    """The batch's head update: the per-chat atomic counter moves by ``count``, conditional
    on its expected value and on no other writer holding a live head claim (ADR 0034); an
    append clears the claim (its writer's, or a lapsed one)."""
    return {
        "Update": {
            "TableName": table,
            "Key": {"chat_id": _s(chat_id)},
            "UpdateExpression": "ADD #h :n SET #t = :now REMOVE #cw, #cu",
            "ConditionExpression": (
                "#h = :expected AND (attribute_not_exists(#cw) OR #cw = :me OR #cu < :clock)"
            ),
            "ExpressionAttributeNames": {
                "#h": "head",
                "#t": "last_message_at_ms",
                "#cw": "claim_writer",
                "#cu": "claim_until_ms",
            },
            "ExpressionAttributeValues": {
                ":n": _n(count),
                ":expected": _n(expected),
                ":now": _n(at_ms),
                ":me": _s(writer),
                ":clock": _n(now_ms),
            },
            # A lost race names the head that won it (ADR 0034): the next attempt is one
            # round trip, not a read and a write.
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def _batch_outcome(
    reasons: Sequence[Mapping[str, Any]],
    appends: Sequence[Append],
    senders: list[str],
    *,
    writer: str,
    now_ms: int,
) -> BatchOutcome:
    """What a cancelled append transaction's reasons say, by the item layout of
    ``append_batch``: which messages are rejected and why, and whether (and to what) the head
    moved or another writer claims it."""
    codes = [str(reason.get("Code") or "None") for reason in reasons]
    failed = {index for index, code in enumerate(codes) if code == "ConditionalCheckFailed"}
    rejected: dict[int, AppendOutcome] = {}
    checks = 1 + 3 * len(appends)
    for index, append in enumerate(appends):
        if 2 + 3 * index in failed:
            rejected[index] = AppendOutcome.DUPLICATE_KEY
        elif checks + senders.index(append.message.sender_id) in failed:
            rejected[index] = AppendOutcome.NOT_A_MEMBER
    # The head moved (or a message Put found its sequence taken, the same thing), or a
    # concurrent transaction touched the same items (TransactionConflict): both mean
    # "re-read and try again". An emulator that names no reason means the same.
    head_moved = (
        not rejected or 0 in failed or any(1 + 3 * i in failed for i in range(len(appends)))
    )
    head: int | None = None
    claimed_until: int | None = None
    if head_moved and 0 in failed:
        item = reasons[0].get("Item") or {}
        seen = item.get("head", {}).get("N")
        head = int(seen) if seen is not None else None
        holder = item.get("claim_writer", {}).get("S")
        until = int(item.get("claim_until_ms", {}).get("N", 0))
        if holder is not None and holder != writer and until >= now_ms:
            claimed_until = until
    return BatchOutcome(
        rejected=rejected, head_moved=head_moved, head=head, claimed_until_ms=claimed_until
    )
