"""Errors the client raises to its caller."""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error raised by ``messaging.client``."""


class AuthRejected(ClientError):
    """The server closed the connection with 4001 (bad token) or 4003 (token of another device),
    or 4004 (another connection of this device replaced this one).

    Fatal: the client does not reconnect; log in again (4004: keep the newer connection) and
    start a new client.
    """

    def __init__(self, close_code: int, reason: str = "") -> None:
        super().__init__(f"authentication rejected: close {close_code} {reason}".strip())
        self.close_code = close_code
        self.reason = reason


class SendRejected(ClientError):
    """The server answered a ``send_message`` with a non-retriable ``error`` frame."""

    def __init__(self, code: str, message: str, *, retriable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retriable = retriable


class SendExpired(ClientError):
    """No ``send_ack`` within the maximum age of a send (default 24 hours): retrying stopped.

    The message may or may not be stored; the idempotency window (7 days) makes any later
    retry with the same ``client_message_id`` safe.
    """

    def __init__(self, client_message_id: str, age_seconds: float) -> None:
        super().__init__(f"send {client_message_id} expired after {age_seconds:.1f} s")
        self.client_message_id = client_message_id
        self.age_seconds = age_seconds


class SyncRejected(ClientError):
    """The server refused to sync a chat (``not_a_member``, ``not_found``)."""

    def __init__(self, chat_id: str, code: str, message: str) -> None:
        super().__init__(f"sync of {chat_id} refused: {code}: {message}")
        self.chat_id = chat_id
        self.code = code
        self.message = message


class ClientClosed(ClientError):
    """The client was closed while the operation was pending, or before it started."""


class ClientApiError(ClientError):
    """A REST call answered with a non-2xx status.

    The body is ``{"error": {"code", "message", "retriable"}}``.
    """

    def __init__(self, status: int, code: str, message: str, *, retriable: bool) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retriable = retriable
