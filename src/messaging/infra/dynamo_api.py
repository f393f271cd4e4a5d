"""The DynamoDB API as the adapters see it, whatever the transport (ADR 0023): the client
interface (DynamoDB-JSON requests in, DynamoDB-JSON answers out) and the one error type every
transport raises. No I/O library here: transports live in ``infra/dynamodb.py`` (aioboto3) and
``infra/dynamo_http.py`` (lean)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Json = dict[str, Any]

RETRIABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "TransactionInProgressException",
        "LimitExceededException",
    }
)


class DynamoError(Exception):
    """A DynamoDB API call that failed: the service's error code (``ConditionalCheckFailed-
    Exception``, ``TransactionCanceledException``, ...) or, for a call that never got an answer,
    the name of what went wrong (``TimeoutError``, ``ServerDisconnectedError``...).

    ``retriable`` is true for throttling, 5xx answers, connection failures and timeouts: the
    same request may succeed later (a timed-out write may also have committed).
    ``cancellation_reasons`` are those of a ``TransactionCanceledException``, one per item;
    ``item`` the one a ``ReturnValuesOnConditionCheckFailure`` asked for."""

    def __init__(
        self,
        code: str,
        message: str = "",
        *,
        status: int = 0,
        retriable: bool | None = None,
        cancellation_reasons: Sequence[Mapping[str, Any]] = (),
        item: Json | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status
        self.retriable = (
            retriable if retriable is not None else (code in RETRIABLE_CODES or status >= 500)
        )
        self.cancellation_reasons = [dict(r) for r in cancellation_reasons]
        self.item = item

    @property
    def cancellation_codes(self) -> list[str]:
        """One code per transaction item, ``"None"`` for an item that was fine."""
        return [str(reason.get("Code") or "None") for reason in self.cancellation_reasons]


def unanswered(exc: BaseException) -> DynamoError:
    """A call that got no answer (connection refused or reset, timeout): retriable."""
    return DynamoError(type(exc).__name__, str(exc) or repr(exc), retriable=True)


class DynamoClient:
    """The DynamoDB API as the adapters use it: each method takes the operation's request
    (keyword arguments, DynamoDB JSON) and returns its answer (a dict, DynamoDB JSON), or raises
    :class:`DynamoError`. A transport implements :meth:`call`."""

    async def call(self, operation: str, request: Json) -> Json:
        raise NotImplementedError

    async def get_item(self, **request: Any) -> Json:
        return await self.call("GetItem", request)

    async def put_item(self, **request: Any) -> Json:
        return await self.call("PutItem", request)

    async def update_item(self, **request: Any) -> Json:
        return await self.call("UpdateItem", request)

    async def delete_item(self, **request: Any) -> Json:
        return await self.call("DeleteItem", request)

    async def query(self, **request: Any) -> Json:
        return await self.call("Query", request)

    async def scan(self, **request: Any) -> Json:
        return await self.call("Scan", request)

    async def transact_write_items(self, **request: Any) -> Json:
        return await self.call("TransactWriteItems", request)

    async def transact_get_items(self, **request: Any) -> Json:
        return await self.call("TransactGetItems", request)

    async def batch_get_item(self, **request: Any) -> Json:
        return await self.call("BatchGetItem", request)

    async def batch_write_item(self, **request: Any) -> Json:
        return await self.call("BatchWriteItem", request)

    async def list_tables(self, **request: Any) -> Json:
        return await self.call("ListTables", request)

    async def create_table(self, **request: Any) -> Json:
        return await self.call("CreateTable", request)

    async def delete_table(self, **request: Any) -> Json:
        return await self.call("DeleteTable", request)

    async def describe_table(self, **request: Any) -> Json:
        return await self.call("DescribeTable", request)

    async def describe_time_to_live(self, **request: Any) -> Json:
        return await self.call("DescribeTimeToLive", request)

    async def update_time_to_live(self, **request: Any) -> Json:
        return await self.call("UpdateTimeToLive", request)
