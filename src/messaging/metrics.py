"""Prometheus metrics of one app instance (its own registry: no global state, so several apps
can live in one process in tests). Served at ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Fine enough below 100 ms for the bench's per-hop p50/p99 (estimated from these buckets).
LIVE_ORDER_ENTRIES = 20_000
"""How many (connection, chat) pairs :meth:`Metrics.pushed_live` remembers (oldest forgotten
first: a forgotten pair only misses an out-of-order count, never affects a delivery)."""

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._live_high: dict[tuple[str, str], int] = {}
        self.connections = Gauge(
            "messaging_ws_connections", "Open authenticated sockets", registry=r
        )
        self.frames_in = Counter(
            "messaging_ws_frames_in_total", "Frames received", ["type"], registry=r
        )
        self.frames_out = Counter(
            "messaging_ws_frames_out_total", "Frames sent", ["type"], registry=r
        )
        self.ws_closes = Counter(
            "messaging_ws_closes_total", "Sockets closed by the server", ["code"], registry=r
        )
        self.limit_rejections = Counter(
            "messaging_limit_rejections_total",
            "Requests, frames and connections refused by an abuse limit (ADR 0010)",
            ["limit"],
            registry=r,
        )
        self.slow_consumer_disconnects = Counter(
            "messaging_ws_slow_consumer_disconnects_total",
            "Sockets closed because their outbound queue overflowed",
            registry=r,
        )
        self.superseded = Counter(
            "messaging_ws_superseded_total",
            "Sockets closed (4004) because a newer connection of the same device replaced them",
            registry=r,
        )
        self.outbound_queue_depth = Histogram(
            "messaging_ws_outbound_queue_depth",
            "Outbound queue depth (messages) seen when a frame is queued",
            buckets=(0, 1, 4, 16, 64, 256, 1024, 4096),
            registry=r,
        )
        self.sends = Counter(
            "messaging_sends_total", "send_message outcomes", ["outcome"], registry=r
        )
        self.send_latency = Histogram(
            "messaging_send_seconds",
            "send_message to durable (send_ack)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sync_replays = Counter(
            "messaging_sync_replayed_messages_total", "Messages replayed by sync", registry=r
        )
        self.sync_requests = Counter(
            "messaging_sync_requests_total", "sync_request frames handled", registry=r
        )
        self.published = Counter(
            "messaging_outbox_published_total", "Messages published to Kafka", ["path"], registry=r
        )
        self.publish_failures = Counter(
            "messaging_outbox_publish_failures_total", "Failed publish attempts", registry=r
        )
        self.fanout_lag = Gauge(
            "messaging_fanout_lag_records",
            "Records behind the Kafka log end on this process's partitions",
            registry=r,
        )
        self.created_to_published = Histogram(
            "messaging_outbox_created_to_published_seconds",
            "From a message's created_at (taken just before its append transaction) to Kafka "
            "acknowledging its publication (path: direct after the send, or the sweeper)",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.created_to_consumed = Histogram(
            "messaging_fanout_created_to_consumed_seconds",
            "From a message's created_at to the fanout consumer taking it from Kafka",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.out_of_order_pushes = Counter(
            "messaging_ws_out_of_order_pushes_total",
            "Live message frames queued to a socket below a sequence already queued to it live "
            "for the same chat (the socket sends them in this order)",
            registry=r,
        )
        self.fanout_reorder_holds = Counter(
            "messaging_fanout_reorder_holds_total",
            "Records the fanout's reorder window held because their chat's previous sequence "
            "had not come from the log yet (ADR 0035)",
            registry=r,
        )
        self.fanout_reorder_expired = Counter(
            "messaging_fanout_reorder_expired_total",
            "Holds of the reorder window that ended by time: fanned out past a missing "
            "sequence (ADR 0035)",
            registry=r,
        )
        self.fanout_reorder_held = Gauge(
            "messaging_fanout_reorder_held_records",
            "Records held in the fanout's reorder window now (ADR 0035)",
            registry=r,
        )
        self.fanout_delivery_lag = Histogram(
            "messaging_fanout_persist_to_handoff_seconds",
            "From persistence to hand-off to the socket's process",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fanout_deliveries = Counter(
            "messaging_fanout_deliveries_total",
            "Message frames queued to local sockets",
            registry=r,
        )
        self.fanout_direct = Counter(
            "messaging_fanout_direct_messages_total",
            "Messages fanned out directly beside the log while it is degraded (ADR 0033), by"
            " outcome: local (queued to this process's sockets), handed_off (to the other"
            " processes), failed, dropped (a queue full)",
            ["outcome"],
            registry=r,
        )
        self.fanout_duplicates_skipped = Counter(
            "messaging_fanout_duplicates_skipped_total",
            "Message frames not queued again to a connection already queued them (ADR 0033)",
            registry=r,
        )
        self.fanout_failures = Counter(
            "messaging_fanout_failures_total",
            "Failed fanout steps: poll, commit, dead_letter, or a batch's retriable or permanent"
            " failure (ADR 0022)",
            ["kind"],
            registry=r,
        )
        self.fanout_dead_letters = Counter(
            "messaging_fanout_dead_letters_total",
            "Records parked as dead letters so that their partition moves on (ADR 0022)",
            ["cause"],
            registry=r,
        )
        self.fanout_seconds_since_progress = Gauge(
            "messaging_fanout_seconds_since_progress",
            "Seconds since the fanout consumer last finished a poll or a batch",
            registry=r,
        )
        self.fanout_stalled_partitions = Gauge(
            "messaging_fanout_stalled_partitions",
            "Partitions of this consumer with records pending and none finished for longer "
            "than MESSAGING_FANOUT_STALL_MS (ADR 0026)",
            registry=r,
        )
        self.fanout_longest_pending_seconds = Gauge(
            "messaging_fanout_longest_pending_seconds",
            "The longest any partition of this consumer has had records pending without one "
            "finished (0 when none is pending; ADR 0026)",
            registry=r,
        )
        self.dynamodb_latency = Histogram(
            "messaging_dynamodb_call_seconds",
            "DynamoDB API call latency",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dynamodb_errors = Counter(
            "messaging_dynamodb_errors_total",
            "DynamoDB API errors",
            ["operation", "code"],
            registry=r,
        )

    def since_created(
        self, histogram: Histogram, created_at_ms: Iterable[int], now_seconds: float
    ) -> None:
        """Observe ``now - created_at`` (seconds, never negative) for each message's
        ``created_at_ms`` on ``histogram`` (or one of its labelled children)."""
        now_ms = now_seconds * 1000
        for created in created_at_ms:
            histogram.observe(max(0.0, now_ms - created) / 1000)

    def pushed_live(self, connection_id: str, chat_id: str, sequence: int) -> None:
        """A live ``message`` frame was queued to a connection: count it as out of order when
        a higher sequence of the chat was queued to the same connection live before it."""
        key = (connection_id, chat_id)
        high = self._live_high.get(key)
        if high is None:
            if len(self._live_high) >= LIVE_ORDER_ENTRIES:
                del self._live_high[next(iter(self._live_high))]
            self._live_high[key] = sequence
        elif sequence < high:
            self.out_of_order_pushes.inc()
        else:
            self._live_high[key] = sequence
