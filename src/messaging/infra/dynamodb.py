"""The DynamoDB API: one client interface, two transports, one retry policy, one error type.

Adapters talk to :class:`DynamoClient`: DynamoDB-JSON requests in, DynamoDB-JSON answers out
(the wire format of the DynamoDB API, ADR 0023). Two transports implement it:

* ``lean`` (default): :class:`messaging.infra.dynamo_http.LeanDynamoClient`, signed POSTs over
  one aiohttp session, JSON with orjson;
* ``aioboto3``: :class:`Aioboto3DynamoClient`, the SDK (the reference transport), whose
  ``ClientError`` and connection errors are translated here.

Both raise only :class:`DynamoError` (code, message, cancellation reasons, ``retriable``), so no
vendor exception reaches an adapter, let alone crosses a port.

botocore's own retries are switched off (``total_max_attempts=1``: note that ``max_attempts=1``
would still retry once and hide server errors); the lean transport never retries. Retries happen
in :class:`Retrier` instead, with exponential backoff and full jitter, within a deadline; after it
the caller gets :class:`~messaging.domain.errors.StoreUnavailable`, which is retriable. Only
errors for which a retry is safe are retried: throttling, 5xx, connection failures and timeouts.
Conditional-check failures and transaction cancellations are the caller's to interpret.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import aioboto3
import aiohttp
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from messaging.domain.errors import StoreUnavailable
from messaging.infra.dynamo_api import (
    RETRIABLE_CODES,
    DynamoClient,
    DynamoError,
    Json,
    unanswered,
)
from messaging.infra.dynamo_http import open_lean

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb.client import DynamoDBClient as DynamoDBClient
else:
    DynamoDBClient = Any

T = TypeVar("T")
__all__ = [
    "RETRIABLE_CODES",
    "Aioboto3DynamoClient",
    "DynamoClient",
    "DynamoError",
    "Json",
    "Retrier",
    "StoreLatency",
    "open_client",
    "open_dynamo",
    "unanswered",
]
ClientKind = Literal["lean", "aioboto3"]
CLIENT_KINDS: tuple[ClientKind, ...] = ("lean", "aioboto3")


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def from_client_error(exc: ClientError) -> DynamoError:
    """botocore's ``ClientError`` as a :class:`DynamoError`."""
    response: Mapping[str, Any] = exc.response
    error = response.get("Error", {})
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return DynamoError(
        str(error.get("Code", "")) or f"HTTP{status}",
        str(error.get("Message", "")),
        status=status,
        cancellation_reasons=response.get("CancellationReasons") or (),
        item=response.get("Item"),
    )


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


class Aioboto3DynamoClient(DynamoClient):
    """The reference transport: aiobotocore's client, its errors translated."""

    def __init__(self, client: DynamoDBClient) -> None:
        self.sdk = client
        self._methods: dict[str, Callable[..., Awaitable[Any]]] = {}

    async def call(self, operation: str, request: Json) -> Json:
        method = self._methods.get(operation)
        if method is None:
            method = self._methods[operation] = getattr(self.sdk, _snake(operation))
        try:
            answer = await method(**request)
        except ClientError as exc:
            raise from_client_error(exc) from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise unanswered(exc) from exc
        return dict(answer)


@asynccontextmanager
async def open_client(
    endpoint: str, region: str, *, timeout_seconds: float = 5.0
) -> AsyncIterator[DynamoDBClient]:
    """The raw aiobotocore DynamoDB client (for the conformance suite and tools that want the
    SDK itself). ``endpoint=""`` means real AWS (default credential chain); a local emulator
    endpoint gets fixed dummy credentials."""
    session = aioboto3.Session()
    config = Config(
        region_name=region,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=timeout_seconds,
        read_timeout=timeout_seconds,
        max_pool_connections=64,
        tcp_keepalive=True,
    )
    kwargs: dict[str, Any] = {"config": config, "region_name": region}
    if endpoint:
        kwargs.update(
            endpoint_url=endpoint, aws_access_key_id="local", aws_secret_access_key="local"
        )
    async with session.client("dynamodb", **kwargs) as client:
        yield client


@asynccontextmanager
async def open_dynamo(
    endpoint: str,
    region: str,
    *,
    client: ClientKind = "lean",
    timeout_seconds: float = 5.0,
    max_connections: int = 64,
) -> AsyncIterator[DynamoClient]:
    """A :class:`DynamoClient` over the chosen transport (``MESSAGING_DYNAMODB_CLIENT``)."""
    if client == "aioboto3":
        async with open_client(endpoint, region, timeout_seconds=timeout_seconds) as sdk:
            yield Aioboto3DynamoClient(sdk)
        return
    if client != "lean":
        raise ValueError(f"unknown DynamoDB client {client!r}: one of {', '.join(CLIENT_KINDS)}")
    async with open_lean(
        endpoint, region, timeout_seconds=timeout_seconds, max_connections=max_connections
    ) as lean:
        yield lean


Observer = Callable[[str, float, str | None], None]
"""Called after every attempt: (what, seconds, error code or None)."""


def _ignore(_what: str, _seconds: float, _error: str | None) -> None:
    return None


class Retrier:
    """Runs an operation with backoff and full jitter until it succeeds or the deadline passes."""

    def __init__(
        self,
        deadline_seconds: float,
        *,
        observe: Observer = _ignore,
        base_delay: float = 0.02,
        max_delay: float = 0.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.deadline_seconds = deadline_seconds
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._observe = observe

    async def run(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        deadline = self._clock() + self.deadline_seconds
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                result = await operation()
            except DynamoError as exc:
                self._observe(what, time.perf_counter() - started, exc.code)
                if not exc.retriable:
                    raise
                attempt += 1
                delay = self._rng.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
                if self._clock() + delay >= deadline:
                    raise StoreUnavailable(
                        f"the message store did not answer {what} within "
                        f"{self.deadline_seconds:g}s ({attempt} attempts; last: {exc!r}); "
                        "each write is all-or-nothing, so retry the same request later"
                    ) from exc
                await self._sleep(delay)
            else:
                self._observe(what, time.perf_counter() - started, None)
                return result


class StoreLatency:
    """Unready while this process's path to the store is slow (ADR 0034): fails when the 90th
    percentile of the DynamoDB calls of the last ``window_seconds`` (at least ``min_calls`` of
    them, at most ``max_calls``) took longer than ``bound_seconds``. A call that failed
    counts with the time it took (a timeout, the whole deadline). Fed by the retrier's
    observer (:meth:`observe`); no calls in the window, no verdict (ready: ``DynamoHealth``
    says whether the store answers at all)."""

    name = "store_latency"

    def __init__(
        self,
        bound_seconds: float,
        *,
        window_seconds: float = 10.0,
        min_calls: int = 10,
        max_calls: int = 1000,
        quantile: float = 0.9,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bound_seconds = bound_seconds
        self._window = window_seconds
        self._min_calls = min_calls
        self._quantile = quantile
        self._clock = clock
        self._calls: deque[tuple[float, float]] = deque(maxlen=max_calls)

    def observe(self, _what: str, seconds: float, _error: str | None) -> None:
        self._calls.append((self._clock(), seconds))

    def slow(self) -> float | None:
        """The quantile of the window's call times when above the bound, else ``None``."""
        since = self._clock() - self._window
        calls = self._calls
        while calls and calls[0][0] < since:
            calls.popleft()
        if len(calls) < self._min_calls:
            return None
        times = sorted(seconds for _, seconds in calls)
        value = times[min(len(times) - 1, int(len(times) * self._quantile))]
        return value if value > self.bound_seconds else None

    async def check(self) -> None:
        value = self.slow()
        if value is not None:
            raise TimeoutError(
                f"p{int(self._quantile * 100)} of the last {self._window:g}s of store calls is "
                f"{value * 1000:.0f} ms (bound {self.bound_seconds * 1000:.0f} ms)"
            )


class DynamoHealth:
    """Ready when the DynamoDB API answers ``ListTables``."""

    name = "dynamodb"

    def __init__(self, client: DynamoClient, timeout_seconds: float = 2.0) -> None:
        self._client = client
        self._timeout = timeout_seconds

    async def check(self) -> None:
        await asyncio.wait_for(self._client.list_tables(Limit=1), self._timeout)


async def batch_get(
    client: DynamoClient,
    retrier: Retrier,
    table: str,
    keys: list[dict[str, Any]],
    *,
    projection: str | None = None,
) -> list[dict[str, Any]]:
    """Every item found for ``keys`` (strongly consistent), in chunks of 100, following
    ``UnprocessedKeys`` until done."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(keys), 100):
        request: dict[str, Any] = {"Keys": keys[start : start + 100], "ConsistentRead": True}
        if projection:
            request["ProjectionExpression"] = projection
        pending: dict[str, Any] = {table: request}
        while pending:
            items = pending
            answer = await retrier.run(
                f"BatchGetItem {table}",
                lambda items=items: client.batch_get_item(RequestItems=items),  # type: ignore[misc]
            )
            found.extend(answer.get("Responses", {}).get(table, []))
            pending = dict(answer.get("UnprocessedKeys") or {})
    return found


async def batch_write(
    client: DynamoClient, retrier: Retrier, table: str, requests: list[dict[str, Any]]
) -> None:
    """``PutRequest``/``DeleteRequest`` entries in chunks of 25, following ``UnprocessedItems``.
    Each entry is idempotent, so a retried chunk is harmless."""
    for start in range(0, len(requests), 25):
        pending: dict[str, Any] = {table: requests[start : start + 25]}
        while pending:
            items = pending
            answer = await retrier.run(
                f"BatchWriteItem {table}",
                lambda items=items: client.batch_write_item(RequestItems=items),  # type: ignore[misc]
            )
            pending = dict(answer.get("UnprocessedItems") or {})
