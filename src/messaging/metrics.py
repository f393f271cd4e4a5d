"""Prometheus metrics of one app instance (its own registry: no global state, so several apps
can live in one process in tests). Served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
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
