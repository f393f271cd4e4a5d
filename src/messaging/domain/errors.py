"""Errors that cross plane boundaries.

Each error carries a stable machine-readable ``code`` (used by REST bodies and WebSocket error
frames) and says whether retrying the same request may succeed (``retriable``), in the manner of
aiokafka's ``KafkaError.retriable``. Vendor exceptions (botocore, redis, aiokafka) never cross a
port: adapters translate them into these.
"""

from __future__ import annotations


class MessagingError(Exception):
    code: str = "internal_error"
    retriable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(MessagingError):
    code = "invalid_input"


class NotFound(MessagingError):
    code = "not_found"


class LimitExceeded(InvalidInput):
    """A request over a configured size or count limit; ``limit`` names which (for metrics
    and for the client: docs/adr/0010-abuse-limits-and-origin-checks.md)."""

    code = "limit_exceeded"

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


def chat_not_found(chat_id: str) -> NotFound:
    """The one answer for a chat that does not exist and for a chat the caller was never in:
    an outsider must not learn whether a chat exists (1:1 chat ids derive from the two user
    ids, which ``/v1/users/by-phone`` reveals). A member removed from a chat knows it exists
    and gets :class:`NotAMember` instead."""
    return NotFound(f"chat {chat_id} does not exist or you are not in it")


class Unauthenticated(MessagingError):
    code = "unauthenticated"


class DeviceMismatch(Unauthenticated):
    """A valid token presented for another device than the one it was issued to."""

    code = "device_mismatch"


class Forbidden(MessagingError):
    code = "forbidden"


class NotAMember(Forbidden):
    code = "not_a_member"


class Conflict(MessagingError):
    code = "conflict"


class IdempotencyKeyReused(Conflict):
    """The same (sender, client_message_id) was sent before with different content."""

    code = "idempotency_key_reused"


class RateLimited(MessagingError):
    code = "rate_limited"
    retriable = True

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(MessagingError):
    """A dependency did not answer in time; nothing was half-written; try again."""

    code = "unavailable"
    retriable = True


class StoreUnavailable(Unavailable):
    code = "store_unavailable"
