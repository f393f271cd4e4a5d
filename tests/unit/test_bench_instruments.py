"""The bench's instruments (no I/O): the CPU-cost line, the quantiles estimated from /metrics
buckets, the per-instance differencing of scrapes, and the app's out-of-order push counter."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import generate_latest

from messaging.bench.cost import cpu_cost, describe, least_squares
from messaging.bench.report import delivery_order, targets
from messaging.bench.server import HOPS, OUT_OF_ORDER, Scrape, metrics_delta, parse, quantile
from messaging.metrics import LIVE_ORDER_ENTRIES, Metrics


def phase(label: str, mode: str, acked: float, deliveries: float, cpu: float) -> dict[str, object]:
    return {
        "label": label,
        "mode": mode,
        "acked_per_s": acked,
        "deliveries_per_s": deliveries,
        "app_cpu_pct": cpu,
    }


def test_least_squares_recovers_a_line_and_says_how_well_it_fits() -> None:
    line = least_squares([(10.0, 15.0), (20.0, 20.0), (40.0, 30.0)])
    assert line is not None
    assert line.slope == pytest.approx(0.5)
    assert line.intercept == pytest.approx(10.0)
    assert line.r2 == pytest.approx(1.0)
    noisy = least_squares([(10.0, 16.0), (20.0, 19.0), (40.0, 31.0)])
    assert noisy is not None
    assert noisy.r2 is not None
    assert 0.9 < noisy.r2 < 1.0
    assert least_squares([(10.0, 1.0)]) is None
    assert least_squares([(10.0, 1.0), (10.0, 2.0)]) is None  # no spread in x


def test_cpu_cost_is_the_slope_over_the_open_loop_points_in_ms_per_message() -> None:
    phases = [
        phase("max", "closed", 200.0, 400.0, 99.0),  # saturated: not on the line
        phase("0.25x", "open", 50.0, 100.0, 45.0),
        phase("0.5x", "open", 100.0, 200.0, 80.0),
        phase("0.75x", "open", 150.0, 300.0, 115.0),
    ]
    cost = cpu_cost(phases, {"seconds": 3.0, "app_cpu_pct": 9.5})
    # 0.7 % of a core per send/s = 7 ms of CPU per send; 3.5 ms per delivery.
    assert cost["per_acked_send"]["cpu_ms"] == pytest.approx(7.0)
    assert cost["per_acked_send"]["intercept_pct"] == pytest.approx(10.0)
    assert cost["per_acked_send"]["r2"] == pytest.approx(1.0)
    assert cost["per_acked_send"]["points"] == 3
    assert cost["per_delivery"]["cpu_ms"] == pytest.approx(3.5)
    assert cost["idle_measured_pct"] == 9.5
    assert [p["label"] for p in cost["points"]] == ["0.25x", "0.5x", "0.75x"]
    assert "7.00 ms" in describe(cost)
    assert "r²=1.00" in describe(cost)


def test_one_load_point_needs_the_idle_point_for_a_slope() -> None:
    one = [phase("direct", "closed", 100.0, 200.0, 60.0)]
    with_idle = cpu_cost(one, {"seconds": 2.0, "app_cpu_pct": 10.0})
    assert with_idle["per_acked_send"]["cpu_ms"] == pytest.approx(5.0)
    assert with_idle["per_acked_send"]["r2"] is None
    assert "idle point" in with_idle["per_acked_send"]["method"]
    without = cpu_cost(one, None)
    assert without["per_acked_send"]["cpu_ms"] is None
    assert without["per_delivery"]["cpu_ms"] is None
    assert "not enough points" in describe(without)


def test_quantiles_interpolate_within_the_bucket_like_prometheus() -> None:
    buckets = {"0.01": 50.0, "0.02": 90.0, "0.05": 100.0, "+Inf": 100.0}
    assert quantile(buckets, 0.5) == pytest.approx(0.01)
    assert quantile(buckets, 0.7) == pytest.approx(0.015)
    assert quantile(buckets, 0.99) == pytest.approx(0.047)
    assert quantile({"0.01": 0.0, "+Inf": 4.0}, 0.5) == pytest.approx(0.01)  # above the top
    assert quantile({"0.01": 0.0, "+Inf": 0.0}, 0.5) is None
    assert quantile({}, 0.5) is None
    assert not math.isinf(quantile({"+Inf": 3.0}, 0.99) or 0.0)


def scrape_of(**instances: Metrics) -> Scrape:
    return Scrape(
        by_instance={
            name: parse(generate_latest(m.registry).decode()) for name, m in instances.items()
        },
        expected=len(instances),
        tries=len(instances),
    )


def test_a_phase_delta_sums_the_instances_seen_at_both_ends_and_estimates_the_hops() -> None:
    one, two, gone = Metrics(), Metrics(), Metrics()
    for m in (one, two, gone):
        m.send_latency.observe(0.004)
        m.fanout_deliveries.inc(10)
    before = scrape_of(a=one, b=two, c=gone)
    for _ in range(99):
        one.send_latency.observe(0.004)
    one.send_latency.observe(0.2)
    two.created_to_published.labels("direct").observe(0.03)
    two.created_to_published.labels("sweep").observe(3.0)  # the repair path: not this hop
    two.fanout_deliveries.inc(5)
    two.pushed_live("c1", "chat", 5)
    two.pushed_live("c1", "chat", 4)
    gone.fanout_deliveries.inc(1000)
    after = scrape_of(a=one, b=two)
    delta = metrics_delta(before, after)
    assert delta["instances"] == {"expected": 2, "differenced": 2, "scrape_tries": 5}
    assert delta["messaging_fanout_deliveries_total"] == 5
    assert delta[OUT_OF_ORDER] == 1
    hops = delta["hops"]
    assert list(hops) == [hop.name for hop in HOPS]
    send = hops[HOPS[0].name]
    assert send["count"] == 100
    assert 3.0 <= send["p50_ms"] <= 5.0  # inside the (3 ms, 5 ms] bucket
    assert send["p99_ms"] <= 5.0
    published = hops[HOPS[1].name]
    assert published["count"] == 1
    assert published["mean_ms"] == pytest.approx(30.0)
    assert hops[HOPS[2].name]["p50_ms"] is None


def test_a_live_push_below_one_already_pushed_to_the_socket_counts_as_out_of_order() -> None:
    metrics = Metrics()

    def count() -> float:
        return metrics.registry.get_sample_value(OUT_OF_ORDER) or 0.0

    metrics.pushed_live("c1", "chat", 1)
    metrics.pushed_live("c1", "chat", 3)
    assert count() == 0
    metrics.pushed_live("c1", "chat", 2)  # below 3: out of order
    assert count() == 1
    metrics.pushed_live("c1", "chat", 3)  # the same one again: a duplicate, not out of order
    metrics.pushed_live("c2", "chat", 2)  # another socket has its own order
    metrics.pushed_live("c1", "other", 1)  # and another chat
    assert count() == 1
    for k in range(LIVE_ORDER_ENTRIES + 5):  # bounded: the oldest pairs are forgotten
        metrics.pushed_live(f"x{k}", "chat", 1)
    assert len(metrics._live_high) == LIVE_ORDER_ENTRIES


def test_since_created_observes_each_message_and_never_a_negative_time() -> None:
    metrics = Metrics()
    metrics.since_created(metrics.created_to_consumed, [1_000_000, 1_000_500, 1_002_000], 1001.0)
    samples = {
        s.name: s.value
        for f in metrics.registry.collect()
        if f.name == "messaging_fanout_created_to_consumed_seconds"
        for s in f.samples
    }
    assert samples["messaging_fanout_created_to_consumed_seconds_count"] == 3
    assert samples["messaging_fanout_created_to_consumed_seconds_sum"] == pytest.approx(1.5)


def test_a_scenario_reports_its_duplicate_and_out_of_order_frames_against_the_target() -> None:
    group: dict[str, Any] = {
        "scenario": "group",
        "sizes": [
            {"members": 10, "delivery_frames": {"deliveries": 1000, "duplicate_frames": 30}},
            {"members": 100, "delivery_frames": {"deliveries": 3000, "duplicate_frames": 10}},
        ],
        "server_total": {"messaging_fanout_deliveries_total": 4000.0, OUT_OF_ORDER: 40.0},
    }
    for size in group["sizes"]:
        frames = size["delivery_frames"]
        frames["duplicate_ratio"] = frames["duplicate_frames"] / frames["deliveries"]
    order = delivery_order(group)
    assert order == {
        "live_pushes": 4000.0,
        "out_of_order_live_pushes": 40.0,
        "out_of_order_ratio": 0.01,
        "deliveries": 4000,
        "duplicate_frames": 40,
        "duplicate_ratio": 0.01,
    }
    verdicts = {
        t["target"]: t["met"]
        for t in targets({"group": group}, {})
        if "duplicate message frames" in t["target"]
    }
    assert verdicts == {
        "group 10 members: duplicate message frames <= 1 % of deliveries": False,
        "group 100 members: duplicate message frames <= 1 % of deliveries": True,
    }
