"""The durability plane's own settings, filled by the composition root."""

from __future__ import annotations

import attrs

HISTORY_MAX_LIMIT = 100
SYNC_MAX_LIMIT = 1000
TITLE_MAX_CHARS = 100


@attrs.frozen(kw_only=True)
class DurabilityConfig:
    max_text_bytes: int = 4096
    max_group_members: int = 256
    max_chats_per_user: int = 500
    idempotency_ttl_seconds: int = 7 * 24 * 3600
    append_deadline_seconds: float = 5.0
    head_cache_size: int = 10_000
    commit_max_messages: int = 24
    """Messages per group-commit transaction (ADR 0024): 1 + 3 x 24 + up to 24 membership
    checks = 97 items, under DynamoDB's 100."""
    commit_max_bytes: int = 1_000_000
    """Estimated bytes per group-commit transaction (DynamoDB allows 4 MB)."""
    commit_queue_limit: int = 1000
    """Sends waiting per chat and process; beyond it a send is refused as retriable."""
    head_claim_seconds: float = 2.0
    """How long a head claim holds other writers of the chat back at most (ADR 0034): the
    claimer's append clears it; a claimer that died holds them back this long."""
    ack_window_seconds: float = 0.2
    """Delivery acks are coalesced per (user, chat) over this window (ADR 0025)."""
    ack_pending_limit: int = 100_000
    """Acks waiting for their coalesced write, per process; beyond it an ack is refused as
    retriable."""
