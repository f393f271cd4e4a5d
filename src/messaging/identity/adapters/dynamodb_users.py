"""Users, phone numbers and device sessions in DynamoDB.

Tables (``infra/schema.py``): ``phone_numbers`` (pk ``phone`` -> ``user_id``), ``users`` (pk
``user_id``) and ``devices`` (pk ``user_id``, sk ``device_id``, with ``session_epoch``).

A phone's first login writes both items in one ``TransactWriteItems``, each conditioned on
``attribute_not_exists``: of two concurrent first logins one transaction commits and the other
is cancelled, reads the committed mapping (strongly consistent) and returns that user id, so a
phone never gets two users. Reads are strongly consistent: a login right after a first login on
another app process must see it. Every call runs under the shared :class:`Retrier` (throttling,
5xx and connection errors retried within a deadline, then ``StoreUnavailable``); any other
DynamoDB error becomes a domain error here, never a transport or vendor one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from messaging.domain.errors import MessagingError, StoreUnavailable
from messaging.infra.dynamodb import DynamoClient, DynamoError, Retrier, batch_get
from messaging.infra.schema import DEVICES, PHONE_NUMBERS, USERS, table_name

T = TypeVar("T")

MAX_CREATE_ROUNDS = 5  # transaction conflicts before giving up (each round re-reads first)


async def _run(retrier: Retrier, what: str, operation: Callable[[], Awaitable[T]]) -> T:
    """``operation`` under the retrier, with DynamoDB's remaining errors made domain errors."""
    try:
        return await retrier.run(what, operation)
    except DynamoError as exc:
        raise MessagingError(f"the user store refused {what}: {exc.code}") from exc


def _ms(seconds: float) -> str:
    return str(int(seconds * 1000))


class DynamoUserDirectory:
    """Implements ``identity.ports.UserDirectory``."""

    def __init__(self, client: DynamoClient, table_prefix: str, retrier: Retrier) -> None:
        self._client = client
        self._retrier = retrier
        self._phones = table_name(table_prefix, PHONE_NUMBERS)
        self._users = table_name(table_prefix, USERS)

    async def find(self, phone: str) -> str | None:
        async def get() -> Any:
            return await self._client.get_item(
                TableName=self._phones, Key={"phone": {"S": phone}}, ConsistentRead=True
            )

        found = await _run(self._retrier, "reading a phone number", get)
        item = found.get("Item")
        return None if item is None else str(item["user_id"]["S"])

    async def missing(self, user_ids: Sequence[str]) -> set[str]:
        wanted = list(dict.fromkeys(user_ids))
        keys = [{"user_id": {"S": u}} for u in wanted]
        try:
            items = await batch_get(
                self._client, self._retrier, self._users, keys, projection="user_id"
            )
        except DynamoError as exc:
            raise MessagingError(f"the user store refused reading users: {exc.code}") from exc
        return set(wanted) - {item["user_id"]["S"] for item in items}

    async def create(self, phone: str, user_id: str, created_at: float) -> str:
        for _ in range(MAX_CREATE_ROUNDS):
            try:
                await self._retrier.run(
                    "creating a user", lambda: self._put(phone, user_id, created_at)
                )
                return user_id
            except DynamoError as exc:
                if exc.code != "TransactionCanceledException":
                    raise MessagingError(
                        f"the user store refused creating a user: {exc.code}"
                    ) from exc
            # Cancelled: the phone has a user already (read it), or a concurrent transaction on
            # the same items had not committed yet (TransactionConflict: go again).
            existing = await self.find(phone)
            if existing is not None:
                return existing
        raise StoreUnavailable(
            f"creating the user for a phone conflicted {MAX_CREATE_ROUNDS} times; retry"
        )

    async def _put(self, phone: str, user_id: str, created_at: float) -> Any:
        created = {"N": _ms(created_at)}
        return await self._client.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": self._phones,
                        "Item": {
                            "phone": {"S": phone},
                            "user_id": {"S": user_id},
                            "created_at_ms": created,
                        },
                        "ConditionExpression": "attribute_not_exists(phone)",
                    }
                },
                {
                    "Put": {
                        "TableName": self._users,
                        "Item": {
                            "user_id": {"S": user_id},
                            "phone": {"S": phone},
                            "created_at_ms": created,
                        },
                        "ConditionExpression": "attribute_not_exists(user_id)",
                    }
                },
            ]
        )


class DynamoDeviceSessions:
    """Implements ``identity.ports.DeviceSessions``: ``session_epoch`` on each devices item."""

    def __init__(self, client: DynamoClient, table_prefix: str, retrier: Retrier) -> None:
        self._client = client
        self._retrier = retrier
        self._devices = table_name(table_prefix, DEVICES)

    def _key(self, user_id: str, device_id: str) -> dict[str, Any]:
        return {"user_id": {"S": user_id}, "device_id": {"S": device_id}}

    async def begin(self, user_id: str, device_id: str, now: float) -> int:
        async def update() -> Any:
            return await self._client.update_item(
                TableName=self._devices,
                Key=self._key(user_id, device_id),
                UpdateExpression=(
                    "ADD session_epoch :one "
                    "SET last_login_at_ms = :now, "
                    "first_login_at_ms = if_not_exists(first_login_at_ms, :now)"
                ),
                ExpressionAttributeValues={":one": {"N": "1"}, ":now": {"N": _ms(now)}},
                ReturnValues="UPDATED_NEW",
            )

        updated = await _run(self._retrier, "starting a device session", update)
        return int(updated["Attributes"]["session_epoch"]["N"])

    async def current(self, user_id: str, device_id: str) -> int | None:
        async def get() -> Any:
            return await self._client.get_item(
                TableName=self._devices,
                Key=self._key(user_id, device_id),
                ConsistentRead=True,
                ProjectionExpression="session_epoch",
            )

        found = await _run(self._retrier, "reading a device session", get)
        item = found.get("Item")
        return None if item is None else int(item["session_epoch"]["N"])

    async def end(self, user_id: str, device_id: str, epoch: int) -> bool:
        async def update() -> Any:
            return await self._client.update_item(
                TableName=self._devices,
                Key=self._key(user_id, device_id),
                UpdateExpression="ADD session_epoch :one",
                ConditionExpression="session_epoch = :epoch",
                ExpressionAttributeValues={":one": {"N": "1"}, ":epoch": {"N": str(epoch)}},
            )

        try:
            await self._retrier.run("ending a device session", update)
        except DynamoError as exc:
            if exc.code == "ConditionalCheckFailedException":
                return False
            raise MessagingError(
                f"the user store refused ending a device session: {exc.code}"
            ) from exc
        return True
