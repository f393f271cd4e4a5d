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
