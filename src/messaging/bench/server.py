"""The app's own view of a run: selected ``/metrics`` series of every app process, scraped at
the start and the end of a phase and differenced; the per-hop latencies estimated from the
histograms' buckets.

With ``serve --workers N`` every worker answers on the same port (SO_REUSEPORT), and the kernel
picks the worker per TCP connection, so one request cannot name its worker. A scrape therefore
asks ``/healthz`` (which names the instance that answered), ``/metrics`` and ``/healthz`` again
on ONE keep-alive connection, and keeps the metrics when both answers name the same instance;
it opens fresh connections until it has seen every expected instance (or gives up after a
bounded number of tries, and says how many it saw). Deltas are taken per instance, over the
instances seen at both ends.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import httpx
from prometheus_client.parser import text_string_to_metric_families

COUNTERS = (
    "messaging_sends",
    "messaging_ws_slow_consumer_disconnects",
    "messaging_fanout_deliveries",
    "messaging_outbox_published",
    "messaging_outbox_publish_failures",
    "messaging_dynamodb_errors",
    "messaging_sync_replayed_messages",
    "messaging_ws_closes",
    "messaging_ws_out_of_order_pushes",
    "messaging_fanout_reorder_holds",
    "messaging_fanout_reorder_expired",
)
HISTOGRAMS = (
    "messaging_send_seconds",
    "messaging_dynamodb_call_seconds",
    "messaging_outbox_created_to_published_seconds",
    "messaging_fanout_created_to_consumed_seconds",
    "messaging_fanout_persist_to_handoff_seconds",
)
GAUGES = ("messaging_ws_connections",)
OUT_OF_ORDER = "messaging_ws_out_of_order_pushes_total"


@attrs.frozen
class Hop:
    """One step of a message's way, as one histogram (optionally one labelled child)."""

    name: str
    metric: str
    labels: tuple[tuple[str, str], ...] = ()


HOPS = (
    Hop("send frame in -> durable -> send_ack queued", "messaging_send_seconds"),
    Hop(
        "created -> published to Kafka (acknowledged)",
        "messaging_outbox_created_to_published_seconds",
        (("path", "direct"),),
    ),
    Hop("created -> consumed from Kafka by fanout", "messaging_fanout_created_to_consumed_seconds"),
    Hop("created -> handed to the socket's process", "messaging_fanout_persist_to_handoff_seconds"),
)
"""The server-side hops. ``created`` is the message's ``created_at``, taken just before its
append transaction, so every hop but the first counts from the same instant (cumulative)."""


@attrs.define
class Series:
    """One instance's selected series: counters/gauges/histogram sums and counts flattened to
    ``name{labels}``; for each hop its cumulative bucket counts by upper bound, its sum and its
    count."""

    values: dict[str, float] = attrs.field(factory=lambda: defaultdict(float))
    hops: dict[str, dict[str, float]] = attrs.field(
        factory=lambda: defaultdict(lambda: defaultdict(float))
    )


@attrs.frozen
class Scrape:
    by_instance: dict[str, Series]
    expected: int
    tries: int


def parse(text: str) -> Series:
    series = Series()
    wanted = (*COUNTERS, *HISTOGRAMS, *GAUGES)
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = dict(sample.labels)
            for hop in HOPS:
                if family.name == hop.metric and all(labels.get(k) == v for k, v in hop.labels):
                    into = series.hops[hop.name]
                    if sample.name.endswith("_bucket"):
                        into[labels["le"]] += sample.value
                    elif sample.name.endswith("_sum"):
                        into["sum"] += sample.value
                    elif sample.name.endswith("_count"):
                        into["count"] += sample.value
            if sample.name.endswith("_bucket"):
                continue
            flat = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            series.values[f"{sample.name}{{{flat}}}" if flat else sample.name] += sample.value
    return series


async def _instance_of(http: httpx.AsyncClient, base: str) -> str:
    answer = (await http.get(base + "/healthz")).json()
    return str(answer.get("instance", "")) if isinstance(answer, dict) else ""


async def scrape(base_urls: Sequence[str], workers: int = 1) -> Scrape:
    """Every app process's series; ``workers`` instances expected behind each base URL."""
    found: dict[str, Series] = {}
    tries = 0
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    for base in base_urls:
        seen_here = 0
        for _ in range(max(1, 8 * workers)):
            if seen_here >= workers:
                break
            tries += 1
            # A fresh client is a fresh connection: the kernel may pick another worker.
            async with httpx.AsyncClient(timeout=5.0, trust_env=False, limits=limits) as http:
                try:
                    first = await _instance_of(http, base)
                    if f"{base} {first}" in found:
                        continue
                    text = (await http.get(base + "/metrics")).text
                    again = await _instance_of(http, base)
                except (httpx.HTTPError, ValueError):
                    continue
            if first == again:
                found[f"{base} {first}"] = parse(text)
                seen_here += 1
    return Scrape(by_instance=found, expected=workers * len(base_urls), tries=tries)


def quantile(buckets: Mapping[str, float], q: float) -> float | None:
    """The ``q`` quantile (0..1) in seconds from cumulative bucket counts keyed by upper bound
    (Prometheus' ``histogram_quantile``: linear within the bucket; above the last finite bound
    it answers that bound). None without observations."""
    bounds = sorted((float(le), count) for le, count in buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    total = bounds[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, cumulative in bounds:
        if cumulative >= rank:
            if math.isinf(upper):
                return lower
            inside = cumulative - below
            share = (rank - below) / inside if inside > 0 else 1.0
            return lower + (upper - lower) * share
        lower, below = upper, cumulative
    return lower


def hop_summary(delta: Mapping[str, float]) -> dict[str, Any]:
    count = delta.get("count", 0.0)
    buckets = {k: v for k, v in delta.items() if k not in ("sum", "count")}
    p50, p99 = quantile(buckets, 0.5), quantile(buckets, 0.99)
    return {
        "count": int(count),
        "mean_ms": round(1000 * delta.get("sum", 0.0) / count, 3) if count else None,
        "p50_ms": round(1000 * p50, 2) if p50 is not None else None,
        "p99_ms": round(1000 * p99, 2) if p99 is not None else None,
    }


def metrics_delta(before: Scrape, after: Scrape) -> dict[str, Any]:
    """Counter increments and, per histogram series, its calls and mean in ms, summed over the
    instances seen at both ends; the hops with p50/p99 estimated from the buckets."""
    common = sorted(set(before.by_instance) & set(after.by_instance))
    delta: dict[str, float] = defaultdict(float)
    hops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for instance in common:
        b, a = before.by_instance[instance], after.by_instance[instance]
        for key, value in a.values.items():
            delta[key] += value - b.values.get(key, 0.0)
        for hop, entries in a.hops.items():
            earlier = b.hops.get(hop, {})
            for key, value in entries.items():
                hops[hop][key] += value - earlier.get(key, 0.0)
    out: dict[str, Any] = {}
    for key, value in sorted(delta.items()):
        if "_sum" in key or "_count" in key or key.startswith(GAUGES):
            continue
        if value:
            out[key] = round(value, 3)
    for key, count in sorted(delta.items()):
        if "_count" not in key or not count:
            continue
        total = delta.get(key.replace("_count", "_sum"), 0.0)
        out[key.replace("_count", "")] = {
            "calls": int(count),
            "mean_ms": round(1000 * total / count, 3),
        }
    for gauge in GAUGES:
        out[gauge] = sum(s.values.get(gauge, 0.0) for s in after.by_instance.values())
    out["hops"] = {hop.name: hop_summary(hops.get(hop.name, {})) for hop in HOPS}
    out["instances"] = {
        "expected": after.expected,
        "differenced": len(common),
        "scrape_tries": before.tries + after.tries,
    }
    return out


def value(scrape: Scrape, key: str) -> float:
    """One series summed over the scraped instances."""
    return sum(s.values.get(key, 0.0) for s in scrape.by_instance.values())
