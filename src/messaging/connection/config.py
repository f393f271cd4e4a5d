"""The connection plane's settings, filled by the composition root."""

from __future__ import annotations

import attrs

from messaging.domain.limits import Rate


@attrs.frozen(kw_only=True)
class GatewayConfig:
    outbound_queue_messages: int = 1000
    outbound_queue_bytes: int = 1_048_576
    max_frame_bytes: int = 16_384
    auth_timeout_seconds: float = 5.0
    idle_timeout_seconds: float = 60.0
    sync_page_size: int = 200
    bad_frames_allowed: int = 20
    bad_frames_window_seconds: float = 10.0
    pending_commands: int = 64
    pending_syncs: int = 32
    close_timeout_seconds: float = 5.0
    sends: Rate = attrs.field(factory=lambda: Rate(10.0, 30))
    """Sends per user on this process."""
    syncs: Rate = attrs.field(factory=lambda: Rate(0.5, 30))
    """Sync requests per user on this process."""
    connections_per_user: int = 10
    connections_per_address: int = 200
    allowed_origins: frozenset[str] = frozenset()
    """Browser origins allowed besides the server's own host."""
