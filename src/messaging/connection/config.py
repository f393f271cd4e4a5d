"""The connection plane's settings, filled by the composition root.

A value an operator can set is declared once, in ``messaging.settings``: its fields here have no
default, and ``messaging.bootstrap.gateway_config`` fills them from the settings. Only internal
constants keep a default here (ADR 0022).
"""

from __future__ import annotations

import attrs

from messaging.domain.limits import Rate


@attrs.frozen(kw_only=True)
class GatewayConfig:
    # From settings (no default: see the module docstring)
    outbound_queue_messages: int
    outbound_queue_bytes: int
    max_frame_bytes: int
    auth_timeout_seconds: float
    idle_timeout_seconds: float
    sync_page_size: int
    sync_page_bytes: int = 256 * 1024
    """A replay page's frames weigh about this much at most (ADR 0035)."""
    sends: Rate
    """Sends per user on this process."""
    syncs: Rate
    """Sync requests per user on this process."""
    connections_per_user: int
    connections_per_address: int
    allowed_origins: frozenset[str]
    """Browser origins allowed besides the server's own host."""
    send_deadline_seconds: float
    """Every send is answered within this of its arrival (the store deadline, ADR 0034)."""

    # Internal constants
    bad_frames_allowed: int = 20
    bad_frames_window_seconds: float = 10.0
    pending_commands: int = 64
    pending_syncs: int = 32
    close_timeout_seconds: float = 5.0
