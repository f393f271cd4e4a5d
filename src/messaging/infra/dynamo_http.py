"""The lean DynamoDB transport: the DynamoDB API's own wire protocol over one aiohttp session.

The DynamoDB API is JSON over HTTP: ``POST /`` with ``X-Amz-Target: DynamoDB_20120810.<Op>`` and
``Content-Type: application/x-amz-json-1.0``; the body is the operation's request, the answer the
dict botocore would return (DynamoDB JSON both ways); an error is ``{"__type": "...#Code",
"message": ...}`` with the extra fields of its kind (``CancellationReasons``, ``Item``). What
botocore adds on top (a model-driven serializer and parser, validation, an event system, its
retry machinery) costs several times the store's own work per call (ADR 0023), so this transport
does only what the protocol needs: orjson both ways, a Signature Version 4 signature, the
``x-amz-crc32`` check of the answer, and error translation into
:class:`~messaging.infra.dynamodb.DynamoError`.

Credentials: static dummy ones for a local emulator; for real AWS (``endpoint=""``) botocore's
credential chain, consulted at start and then at most every ``CREDENTIALS_REFRESH_SECONDS`` (in a
thread), never per request. Temporary credentials are refreshed by botocore well before they
expire, so a refresh every few minutes always signs with valid ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import attrs
import orjson

from messaging.infra.dynamo_api import DynamoClient, DynamoError, Json, unanswered

TARGET_PREFIX = "DynamoDB_20120810."
CONTENT_TYPE = "application/x-amz-json-1.0"
CREDENTIALS_REFRESH_SECONDS = 300.0
SERVICE = "dynamodb"


@attrs.frozen(repr=False)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:  # never print a secret
        return f"Credentials(access_key={self.access_key!r}, ...)"


# ------------------------------------------------------------------------------ SigV4


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """``kSigning`` of Signature Version 4, for one day (``YYYYMMDD``), region and service."""
    key = _hmac(("AWS4" + secret_key).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def authorization(
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    payload: bytes,
    access_key: str,
    key: bytes,
    amz_date: str,
    region: str,
    service: str,
) -> str:
    """The ``Authorization`` header of Signature Version 4 for a request whose headers (all of
    them signed; ``host`` and ``x-amz-date`` among them) and body are given. ``path`` is
    already URI-encoded; ``query`` is the canonical query string (sorted, encoded), ``key``
    :func:`signing_key` of ``amz_date``'s day."""
    names = sorted((name.lower(), " ".join(value.split())) for name, value in headers.items())
    canonical_headers = "".join(f"{name}:{value}\n" for name, value in names)
    signed = ";".join(name for name, _ in names)
    canonical_request = "\n".join(
        (method, path, query, canonical_headers, signed, hashlib.sha256(payload).hexdigest())
    )
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        (
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        )
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )


# ------------------------------------------------------------------------------ the client


def error_from_answer(status: int, body: bytes) -> DynamoError:
    """The :class:`DynamoError` of a non-200 answer (its JSON error document, if any)."""
    try:
        document = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    code = str(document.get("__type", "")).rsplit("#", 1)[-1] or f"HTTP{status}"
    message = str(document.get("message") or document.get("Message") or "")
    return DynamoError(
        code,
        message,
        status=status,
        cancellation_reasons=document.get("CancellationReasons") or (),
        item=document.get("Item"),
    )


class LeanDynamoClient(DynamoClient):
    """Signed JSON POSTs over one aiohttp session (bounded connection pool, keep-alive)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        region: str,
        credentials: Credentials,
        *,
        refresh: Callable[[], Credentials] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._url = url
        self._host = urlsplit(url).netloc
        self._region = region
        self._credentials = credentials
        self._refresh = refresh
        self._refresh_at = time.monotonic() + CREDENTIALS_REFRESH_SECONDS
        self._clock = clock
        self._key_day = ""
        self._key = b""

    def _signing_key(self, day: str) -> bytes:
        if day != self._key_day:
            self._key = signing_key(self._credentials.secret_key, day, self._region, SERVICE)
            self._key_day = day
        return self._key

    async def _fresh_credentials(self) -> None:
        if self._refresh is None or time.monotonic() < self._refresh_at:
            return
        self._refresh_at = time.monotonic() + CREDENTIALS_REFRESH_SECONDS
        credentials = await asyncio.to_thread(self._refresh)
        if credentials != self._credentials:
            self._credentials = credentials
            self._key_day = ""

    def headers(self, operation: str, body: bytes) -> dict[str, str]:
        """The signed headers of one call (no I/O)."""
        amz_date = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
        headers = {
            "Host": self._host,
            "Content-Type": CONTENT_TYPE,
            "X-Amz-Date": amz_date,
            "X-Amz-Target": TARGET_PREFIX + operation,
        }
        if self._credentials.token:
            headers["X-Amz-Security-Token"] = self._credentials.token
        headers["Authorization"] = authorization(
            method="POST",
            path="/",
            query="",
            headers=headers,
            payload=body,
            access_key=self._credentials.access_key,
            key=self._signing_key(amz_date[:8]),
            amz_date=amz_date,
            region=self._region,
            service=SERVICE,
        )
        return headers

    async def call(self, operation: str, request: Json) -> Json:
        await self._fresh_credentials()
        body = orjson.dumps(request)
        try:
            async with self._session.post(
                self._url, data=body, headers=self.headers(operation, body)
            ) as response:
                status = response.status
                answer = await response.read()
                crc = response.headers.get("x-amz-crc32")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise unanswered(exc) from exc
        if crc is not None and crc.isdigit() and int(crc) != zlib.crc32(answer):
            raise DynamoError(
                "CRC32CheckFailed", f"{operation}: the answer was damaged", retriable=True
            )
        if status != 200:
            raise error_from_answer(status, answer)
        try:
            result: Any = orjson.loads(answer)
        except orjson.JSONDecodeError as exc:
            raise DynamoError(
                "MalformedAnswer", f"{operation}: not JSON ({exc})", retriable=True
            ) from exc
        if not isinstance(result, dict):
            raise DynamoError("MalformedAnswer", f"{operation}: not an object", retriable=True)
        return result


def aws_credentials() -> tuple[Credentials, Callable[[], Credentials]]:
    """Real AWS: botocore's default credential chain (environment, profile, SSO, container or
    instance role), resolved now; the second value re-reads it (for the periodic refresh)."""
    import botocore.session

    resolved = botocore.session.get_session().get_credentials()
    if resolved is None:
        raise RuntimeError("no AWS credentials found (botocore's default credential chain)")

    def read() -> Credentials:
        frozen = resolved.get_frozen_credentials()
        if not frozen.access_key or not frozen.secret_key:
            raise RuntimeError("the AWS credentials found have no access key or secret key")
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    return read(), read


@asynccontextmanager
async def open_lean(
    endpoint: str, region: str, *, timeout_seconds: float = 5.0, max_connections: int = 64
) -> AsyncIterator[LeanDynamoClient]:
    """``endpoint=""`` means real AWS (``https://dynamodb.<region>.amazonaws.com``, the default
    credential chain); an emulator endpoint gets fixed dummy credentials."""
    refresh: Callable[[], Credentials] | None = None
    if endpoint:
        url = endpoint.rstrip("/") + "/"
        credentials = Credentials("local", "local")
    else:
        url = f"https://dynamodb.{region}.amazonaws.com/"
        credentials, refresh = await asyncio.to_thread(aws_credentials)
    connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30.0)
    timeout = aiohttp.ClientTimeout(total=timeout_seconds, connect=timeout_seconds)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        json_serialize=lambda value: orjson.dumps(value).decode(),
        skip_auto_headers=("User-Agent",),
    ) as session:
        yield LeanDynamoClient(session, url, region, credentials, refresh=refresh)
