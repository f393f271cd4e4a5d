"""The run's results: ratios to the limits, targets, the summary table, JSON, markdown and
PNG charts (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from messaging.bench.cost import describe
from messaging.bench.server import OUT_OF_ORDER

KB = 1024
TARGET_PER_CONNECTION_BYTES = 30 * KB
TARGET_DUPLICATE_RATIO = 0.01
TARGET_CPU_MS_PER_DIRECT_MESSAGE = 2.0
TARGET_IDLE_CPU_PCT = 3.0
TARGET_HOT_CHAT_SENDS_PER_S = 600


def _ratio(value: float | None, limit: float | None) -> float | None:
    if value is None or not limit:
        return None
    return round(value / limit, 3)


def _phases(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "phases" in result:
        return list(result["phases"])
    return [size["phase"] for size in result.get("sizes", [])]


def ratios(scenarios: Iterable[Mapping[str, Any]], base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every system figure as a ratio to the limit it is built on."""
    dynamo = base.get("dynamodb") or {}
    kafka = base.get("kafka") or {}
    echo = base.get("echo") or {}
    store_rate = dynamo.get("sends_per_s")
    store_p99 = (dynamo.get("per_send_ms") or {}).get("p99")
    kafka_rate = kafka.get("produce_consume_per_s")
    echo_rate = echo.get("round_trips_per_s")
    rows: list[dict[str, Any]] = []

    def add(scenario: str, figure: str, value: float | None, limit_name: str, limit: Any) -> None:
        if value is None or not limit:
            return
        rows.append(
            {
                "scenario": scenario,
                "figure": figure,
                "value": value,
                "limit": limit_name,
                "limit_value": limit,
                "ratio": _ratio(value, limit),
            }
        )

    for result in scenarios:
        name = str(result["scenario"])
        for phase in _phases(result):
            label = f"{name}/{phase['label']}"
            add(label, "acked sends/s", phase["acked_per_s"], "DynamoDB API sends/s", store_rate)
            add(
                label, "acked sends/s", phase["acked_per_s"], "Kafka produce->consume/s", kafka_rate
            )
            add(
                label,
                "deliveries/s",
                phase["deliveries_per_s"],
                "WebSocket echo round trips/s",
                echo_rate,
            )
            add(
                label,
                "send->ack p99 ms",
                phase["send_to_ack_ms"]["p99"],
                "DynamoDB API p99 per send ms",
                store_p99,
            )
        if name == "connections" and result.get("bytes_per_connection"):
            add(
                name,
                "server bytes/connection",
                result["bytes_per_connection"],
                "target 30 KB",
                TARGET_PER_CONNECTION_BYTES,
            )
    return rows


def targets(
    scenarios: Mapping[str, Mapping[str, Any]], base: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The issue's five targets, each a ratio from this run (None: not measured in this run)."""
    out: list[dict[str, Any]] = []
    dynamo = base.get("dynamodb") or {}
    echo = base.get("echo") or {}
    direct = scenarios.get("direct")

    def target(
        name: str, value: Any, limit: Any, ratio: float | None, met: bool | None, note: str
    ) -> None:
        out.append(
            {
                "target": name,
                "value": value,
                "limit": limit,
                "ratio": ratio,
                "met": met,
                "note": note,
            }
        )

    if direct is not None:
        top = next((p for p in direct["phases"] if p["label"] in ("max", "direct")), None)
        if top is not None and top["mode"] == "closed" and dynamo.get("sends_per_s"):
            r = _ratio(top["acked_per_s"], dynamo["sends_per_s"])
            target(
                "acked sends/s >= 0.8 x DynamoDB API rate for one send's operations",
                top["acked_per_s"],
                dynamo["sends_per_s"],
                r,
                r is not None and r >= 0.8,
                f"both closed loop at concurrency {top['concurrency']}",
            )
        half = next((p for p in direct["phases"] if p["label"] == "0.5x"), None)
        store = direct.get("store_at_half_load")
        if half is not None and store:
            limit = store["per_send_ms"]["p99"]
            value = half["send_to_ack_ms"]["p99"]
            r = _ratio(value, limit)
            target(
                "p99 send->ack at half of max load <= 2 x the store's p99",
                value,
                limit,
                r,
                r is not None and r <= 2.0,
                f"both open loop at {half['offered_rate']:.0f} sends/s",
            )
    group = scenarios.get("group")
    if group is not None and echo.get("round_trips_per_s"):
        for size in group["sizes"]:
            if size["members"] != 100:
                continue
            value = size["phase"]["deliveries_per_s"]
            r = _ratio(value, echo["round_trips_per_s"])
            target(
                "fanout to 100 members: deliveries/s >= 0.5 x bare WebSocket echo round trips/s",
                value,
                echo["round_trips_per_s"],
                r,
                r is not None and r >= 0.5,
                f"{size['senders']} senders; echo at concurrency {echo['concurrency']}",
            )
    conns = scenarios.get("connections")
    if conns is not None and conns.get("bytes_per_connection"):
        value = conns["bytes_per_connection"]
        r = _ratio(value, TARGET_PER_CONNECTION_BYTES)
        target(
            f"{conns['requested']} idle authenticated sockets on one process at <= 30 KB each",
            value,
            TARGET_PER_CONNECTION_BYTES,
            r,
            None
            if conns["requested"] < 10_000
            else conns["opened"] >= 10_000 and r is not None and r <= 1.0,
            f"{conns['opened']} opened" + ("" if conns["opened"] >= 10_000 else " (< 10,000)"),
        )
    catch = scenarios.get("catchup")
    if catch is not None:
        c = catch["catchup"]
        target(
            f"catch-up of {c['messages']} messages without a slow-consumer disconnect",
            c["messages_per_s"],
            None,
            None,
            None
            if c["messages"] < 10_000
            else c["complete"] and c["slow_consumer_disconnects"] == 0,
            f"{c['seconds']} s, {c['messages_per_s']:.0f} msgs/s, "
            f"{c['slow_consumer_disconnects']} slow-consumer disconnects",
        )
    if direct is not None and direct.get("cpu_cost"):
        fit = direct["cpu_cost"]["per_acked_send"]
        if fit["cpu_ms"] is not None:
            value = fit["cpu_ms"]
            r = _ratio(value, TARGET_CPU_MS_PER_DIRECT_MESSAGE)
            target(
                "app CPU per 1:1 message (send through delivery ack) <= 2 ms",
                value,
                TARGET_CPU_MS_PER_DIRECT_MESSAGE,
                r,
                r is not None and r <= 1.0,
                fit["method"] + ("" if fit["r2"] is None else f", r²={fit['r2']:.2f}"),
            )
    if conns is not None and conns.get("idle_processes"):
        value = sum(
            v["cpu_pct_avg"] for k, v in conns["idle_processes"].items() if k.startswith("app")
        )
        r = _ratio(value, TARGET_IDLE_CPU_PCT)
        target(
            f"idle CPU of an app with {conns['opened']} idle sockets <= 3 % of a core",
            round(value, 1),
            TARGET_IDLE_CPU_PCT,
            r,
            None if conns["opened"] < 1000 else r is not None and r <= 1.0,
            f"held {conns['hold_seconds']:g} s",
        )
    hot = scenarios.get("hot")
    if hot is not None:
        (chat,) = hot["sizes"]
        value = chat["phase"]["acked_per_s"]
        r = _ratio(value, TARGET_HOT_CHAT_SENDS_PER_S)
        target(
            f"one hot {chat['members']}-member chat, {chat['senders']} concurrent senders: "
            f"acked sends/s >= {TARGET_HOT_CHAT_SENDS_PER_S}",
            value,
            TARGET_HOT_CHAT_SENDS_PER_S,
            r,
            None
            if chat["members"] != 10 or chat["senders"] < 50
            else r is not None and r >= 1.0 and bool(chat["checker"]["ok"]),
            f"{chat['connections']} connections ({chat['devices_per_member']} devices per "
            f"member) each receiving everything; best of in flight per sender "
            f"{', '.join(str(p['in_flight_per_sender']) for p in hot['phases'])}",
        )
    for name in ("direct", "group", "hot"):
        result = scenarios.get(name)
        if result is None:
            continue
        for label, part in _checked_parts(name, result):
            frames = part.get("delivery_frames")
            if not frames or frames["duplicate_ratio"] is None:
                continue
            value = frames["duplicate_ratio"]
            r = _ratio(value, TARGET_DUPLICATE_RATIO)
            target(
                f"{label}: duplicate message frames <= 1 % of deliveries",
                value,
                TARGET_DUPLICATE_RATIO,
                r,
                r is not None and r <= 1.0,
                f"{frames['duplicate_frames']} duplicate frames, {frames['deliveries']} deliveries",
            )
    return out


def delivery_order(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """A scenario's out-of-order live pushes (the app's counter over the whole scenario) as a
    share of its live pushes, and its duplicate frames (the clients' count) of deliveries."""
    total = result.get("server_total")
    parts = [p for _, p in _checked_parts(str(result["scenario"]), result)]
    frames = [p["delivery_frames"] for p in parts if p.get("delivery_frames")]
    if total is None and not frames:
        return None
    pushes = (total or {}).get("messaging_fanout_deliveries_total", 0)
    late = (total or {}).get(OUT_OF_ORDER, 0)
    deliveries = sum(f["deliveries"] for f in frames)
    duplicates = sum(f["duplicate_frames"] for f in frames)
    return {
        "live_pushes": pushes,
        "out_of_order_live_pushes": late,
        "out_of_order_ratio": round(late / pushes, 5) if pushes else None,
        "deliveries": deliveries,
        "duplicate_frames": duplicates,
        "duplicate_ratio": round(duplicates / deliveries, 5) if deliveries else None,
    }


def _cost_parts(name: str, result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    if "sizes" in result:
        return [
            (f"{name} {s['members']} members", s["cpu_cost"])
            for s in result["sizes"]
            if s.get("cpu_cost")
        ]
    return [(name, result["cpu_cost"])] if result.get("cpu_cost") else []


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def hop_rows(scenarios: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    """Per phase: the server's hops (from /metrics buckets), the clients' last hops (from the
    histories) and the end-to-end send->deliver."""
    rows: list[list[str]] = []

    def add(label: str, hop: str, count: Any, p50: Any, p99: Any, mean: Any) -> None:
        rows.append([label, hop, _fmt(count), _ms(p50), _ms(p99), _ms(mean)])

    for result in scenarios:
        for phase in _phases(result):
            label = f"{result['scenario']}/{phase['label']}"
            ack = phase["send_to_ack_ms"]
            add(label, "bench: send -> send_ack", ack["count"], ack["p50"], ack["p99"], ack["mean"])
            for hop, h in (phase.get("server", {}).get("hops") or {}).items():
                add(label, f"app: {hop}", h["count"], h["p50_ms"], h["p99_ms"], h["mean_ms"])
            for hop, h in (phase.get("client_hops") or {}).items():
                if h["count"]:
                    add(label, f"client: {hop}", h["count"], h["p50"], h["p99"], h["mean"])
            dl = phase["send_to_deliver_ms"]
            add(label, "bench: send -> delivered", dl["count"], dl["p50"], dl["p99"], dl["mean"])
    return rows


# ---------------------------------------------------------------- text


def _row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def phase_table(scenarios: Iterable[Mapping[str, Any]]) -> list[str]:
    lines = [
        _row(
            [
                "scenario/phase",
                "mode",
                "acked/s",
                "deliveries/s",
                "ack p50/p95/p99/max ms",
                "deliver p50/p95/p99/max ms",
                "errors",
                "app CPU %",
                "app RSS MB",
                "dup/out-of-order frames",
            ]
        ),
        _row(["---"] * 10),
    ]
    for result in scenarios:
        for phase in _phases(result):
            ack, dl = phase["send_to_ack_ms"], phase["send_to_deliver_ms"]
            mode = (
                f"open {phase['offered_rate']:.0f}/s"
                if phase["mode"] == "open"
                else f"closed c={phase['concurrency']}"
            )
            apps = {k: v for k, v in phase["processes"].items() if k.startswith("app")}
            cpu = "+".join(f"{v['cpu_pct_avg']:.0f}" for v in apps.values()) or "-"
            rss = "+".join(f"{v['rss_peak_mb']:.0f}" for v in apps.values()) or "-"
            lines.append(
                _row(
                    [
                        f"{result['scenario']}/{phase['label']}",
                        mode,
                        _fmt(phase["acked_per_s"]),
                        _fmt(phase["deliveries_per_s"]),
                        f"{ack['p50']:.1f}/{ack['p95']:.1f}/{ack['p99']:.1f}/{ack['max']:.0f}",
                        f"{dl['p50']:.1f}/{dl['p95']:.1f}/{dl['p99']:.1f}/{dl['max']:.0f}",
                        sum(phase["errors"].values()) or 0,
                        cpu,
                        rss,
                        f"{phase.get('duplicate_frames', '-')}/"
                        f"{phase.get('server', {}).get(OUT_OF_ORDER, 0):.0f}",
                    ]
                )
            )
    return lines


def _top_phases(result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The phase that says what a run of the scenario sustains: each group size's phase, or
    the closed-loop maximum (the first phase when there is none)."""
    if "sizes" in result:
        return [(f"{size['members']} members", size["phase"]) for size in result["sizes"]]
    phases = list(result.get("phases", []))
    top = next((p for p in phases if p["mode"] == "closed"), phases[0] if phases else None)
    return [] if top is None else [(str(top["label"]), top)]


def apps_scaling(scenarios: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Throughput and p99 per app-process count (``--apps 1,2,3``); empty for one count."""
    rows: list[dict[str, Any]] = []
    for key, result in scenarios.items():
        for label, phase in _top_phases(result):
            apps = {k: v for k, v in phase.get("processes", {}).items() if k.startswith("app")}
            rows.append(
                {
                    "scenario": key.split("@", 1)[0],
                    "apps": result.get("apps", 1),
                    "phase": label,
                    "acked_per_s": phase["acked_per_s"],
                    "deliveries_per_s": phase["deliveries_per_s"],
                    "ack_p99_ms": phase["send_to_ack_ms"]["p99"],
                    "deliver_p99_ms": phase["send_to_deliver_ms"]["p99"],
                    "app_cpu_pct": round(sum(v["cpu_pct_avg"] for v in apps.values()), 1),
                }
            )
    return rows if len({row["apps"] for row in rows}) > 1 else []


def apps_scaling_table(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    lines = [
        _row(
            [
                "scenario",
                "phase",
                "apps",
                "acked/s",
                "deliveries/s",
                "ack p99 ms",
                "deliver p99 ms",
                "app CPU % (sum)",
            ]
        ),
        _row(["---"] * 8),
    ]
    for row in rows:
        lines.append(
            _row(
                [
                    row["scenario"],
                    row["phase"],
                    row["apps"],
                    _fmt(row["acked_per_s"]),
                    _fmt(row["deliveries_per_s"]),
                    f"{row['ack_p99_ms']:.1f}",
                    f"{row['deliver_p99_ms']:.1f}",
                    f"{row['app_cpu_pct']:.0f}",
                ]
            )
        )
    return lines


def summary_markdown(report: Mapping[str, Any]) -> str:
    out: list[str] = []
    run = report["run"]
    out.append(f"# Bench run {run['run_id']} ({run['started_at']})")
    out.append("")
    out.append(f"Command: `{run['command']}`")
    m = run["machine"]
    out.append(
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}, Python {m['python']}. Load average before {run['loadavg_before']}, "
        f"after {run['loadavg_after']}."
    )
    out.append("")
    out.append("## Phases")
    out.append("")
    out.extend(phase_table(report["scenarios"].values()))
    if report.get("apps_scaling"):
        out.append("")
        out.append("## Per number of app processes")
        out.append("")
        out.extend(apps_scaling_table(report["apps_scaling"]))
    costs = [
        (label, cost)
        for name, result in report["scenarios"].items()
        for label, cost in _cost_parts(name, result)
    ]
    if costs:
        out.append("")
        out.append("## Cost per message (app CPU)")
        out.append("")
        out.append(
            "The slope of the app's CPU over the load phases (least squares; the sweep's "
            "open-loop phases when there are any), its intercept, and the CPU measured with "
            "every client connected and nothing sent. Per acked send and per delivery are two "
            "views of the same CPU."
        )
        out.append("")
        for label, cost in costs:
            out.append(f"- {label}: {describe(cost)}")
    hops = hop_rows(report["scenarios"].values())
    if hops:
        out.append("")
        out.append("## Per-hop latency")
        out.append("")
        out.append(
            "`created` is the message's `created_at`, taken by the app just before its append "
            "transaction: the app's hops after the first, and the client's first, all count "
            "from it (cumulative; differences of the means are the hops' own shares). App hops: "
            "p50/p99 estimated from the /metrics buckets, differenced between the phase's start "
            "and its end (after the drain of its sends), over every instance scraped at both "
            "ends. Client hops: wall clock, 1 ms resolution, messages created in the window."
        )
        out.append("")
        out.append(_row(["scenario/phase", "hop", "count", "p50 ms", "p99 ms", "mean ms"]))
        out.append(_row(["---"] * 6))
        out.extend(_row(r) for r in hops)
    base = report["baselines"]
    out.append("")
    out.append("## Baselines (limits)")
    out.append("")
    out.append(_row(["system", "rate", "latency p50/p99 ms", "how"]))
    out.append(_row(["---"] * 4))
    if base.get("dynamodb"):
        d = base["dynamodb"]
        out.append(
            _row(
                [
                    "DynamoDB API (GetItem + 5-item TransactWriteItems)",
                    f"{d['sends_per_s']:,.0f} sends/s",
                    f"{d['per_send_ms']['p50']:.1f}/{d['per_send_ms']['p99']:.1f}",
                    f"closed loop, concurrency {d['concurrency']}, {d['seconds']} s",
                ]
            )
        )
    if base.get("kafka"):
        k = base["kafka"]
        out.append(
            _row(
                [
                    "Kafka produce -> consume",
                    f"{k['produce_consume_per_s']:,.0f} msgs/s",
                    f"{k['produce_to_consume_ms']['p50']:.1f}/{k['produce_to_consume_ms']['p99']:.1f}",
                    f"window {k['window']}, {k['seconds']} s",
                ]
            )
        )
    if base.get("echo"):
        e = base["echo"]
        out.append(
            _row(
                [
                    "Starlette WebSocket echo, 1 uvicorn process",
                    f"{e['round_trips_per_s']:,.0f} round trips/s",
                    f"{e['round_trip_ms']['p50']:.2f}/{e['round_trip_ms']['p99']:.2f}",
                    f"{e['concurrency']} connections, server CPU {e['server_cpu_pct']}%",
                ]
            )
        )
    if report["targets"]:
        out.append("")
        out.append("## Targets")
        out.append("")
        out.append(_row(["target", "value", "limit", "ratio", "met", "note"]))
        out.append(_row(["---"] * 6))
        for t in report["targets"]:
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            out.append(
                _row(
                    [
                        t["target"],
                        _fmt(t["value"]),
                        _fmt(t["limit"]),
                        _fmt(t["ratio"]),
                        met,
                        t["note"],
                    ]
                )
            )
    out.append("")
    out.append("## Ratios to limits")
    out.append("")
    out.append(_row(["scenario", "figure", "value", "limit", "limit value", "ratio"]))
    out.append(_row(["---"] * 6))
    for r in report["ratios"]:
        out.append(
            _row(
                [
                    r["scenario"],
                    r["figure"],
                    _fmt(r["value"]),
                    r["limit"],
                    _fmt(r["limit_value"]),
                    _fmt(r["ratio"]),
                ]
            )
        )
    out.append("")
    out.append("## Correctness and clients")
    out.append("")
    for name, result in report["scenarios"].items():
        for note in result.get("stack_disruptions", []):
            out.append(f"- **{name}: stack disruption**: {note} (the stack is shared)")
    for name, result in report["scenarios"].items():
        for label, part in _checked_parts(name, result):
            c = part["checker"]
            stats = part.get("client_stats", {})
            out.append(
                f"- {label}: checker {'OK' if c['ok'] else 'FAILED'} ({c.get('violations', 0)} "
                f"violations, {c.get('acked_sends', '-')} acked sends); slow-consumer "
                f"disconnects {stats.get('slow_consumer_disconnects', 0)}, reconnects "
                f"{stats.get('reconnects', 0)}, resends {stats.get('resends', 0)}, close codes "
                f"{stats.get('close_codes', {})}"
            )
    for name, result in report["scenarios"].items():
        order = delivery_order(result)
        if order is None or not (order["deliveries"] or order["live_pushes"]):
            continue
        out.append(
            f"- {name} delivery frames: {order['duplicate_frames']:,} duplicate frames dropped "
            f"by the clients = {_pct(order['duplicate_ratio'])} of {order['deliveries']:,} "
            f"deliveries (target <= 1 %); {order['out_of_order_live_pushes']:,.0f} live "
            f"pushes below a sequence already pushed live to the same socket "
            f"({_pct(order['out_of_order_ratio'])} of {order['live_pushes']:,.0f} live pushes, "
            f"the app's `{OUT_OF_ORDER}`)"
        )
    for name, result in report["scenarios"].items():
        if name == "connections":
            out.append(
                f"- connections: {result['opened']:,} sockets opened ({result['failed']} failed) "
                f"in {result['connect_seconds']} s; server RSS {result['app_rss_before_mb']} -> "
                f"{result['app_rss_after_mb']} MB = {result['kb_per_connection']} KB per "
                f"connection; client "
                f"{(result['client_bytes_per_connection'] or 0) / KB:.1f} KB per connection"
            )
        if "catchup" in result:
            c = result["catchup"]
            out.append(
                f"- {name} catch-up: {c['messages']:,} messages in {c['seconds']} s = "
                f"{c['messages_per_s']:,.0f} msgs/s, complete: {c['complete']}"
            )
    return "\n".join(out) + "\n"


def _checked_parts(name: str, result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    if "sizes" in result:
        return [(f"{name} {s['members']} members", s) for s in result["sizes"]]
    return [(name, result)]


def console_summary(report: Mapping[str, Any]) -> str:
    lines = ["", "=" * 100, "SUMMARY", ""]
    lines.extend(phase_table(report["scenarios"].values()))
    lines.append("")
    if report.get("apps_scaling"):
        lines.append("per number of app processes:")
        lines.extend(apps_scaling_table(report["apps_scaling"]))
        lines.append("")
    for name, result in report["scenarios"].items():
        for label, cost in _cost_parts(name, result):
            lines.append(f"cost {label}: {describe(cost)}")
        order = delivery_order(result)
        if order is not None and (order["deliveries"] or order["live_pushes"]):
            lines.append(
                f"frames {name}: duplicates {order['duplicate_frames']} = "
                f"{_pct(order['duplicate_ratio'])} of deliveries; out-of-order live pushes "
                f"{order['out_of_order_live_pushes']:.0f} = {_pct(order['out_of_order_ratio'])}"
            )
    for result in report["scenarios"].values():
        for phase in _phases(result):
            hops = phase.get("server", {}).get("hops") or {}
            if any(h["count"] for h in hops.values()):
                lines.append(
                    f"hops {result['scenario']}/{phase['label']} p50/p99 ms: "
                    + "; ".join(
                        f"{hop} {_ms(h['p50_ms'])}/{_ms(h['p99_ms'])}"
                        for hop, h in hops.items()
                        if h["count"]
                    )
                )
    lines.append("")
    for t in report["targets"]:
        met = {True: "MET", False: "MISSED", None: "-"}[t["met"]]
        lines.append(
            f"target {met:6s} {t['target']}: {_fmt(t['value'])} vs {_fmt(t['limit'])} "
            f"(ratio {_fmt(t['ratio'])}); {t['note']}"
        )
    lines.append("")
    for r in report["ratios"]:
        lines.append(
            f"ratio {r['scenario']:22s} {r['figure']:24s} {_fmt(r['value']):>10s} / "
            f"{r['limit']} {_fmt(r['limit_value'])} = {_fmt(r['ratio'])}"
        )
    if report["failed_scenarios"]:
        verdict = "FAILED scenario(s): " + ", ".join(report["failed_scenarios"])
    else:
        verdict = "OK" if report["consistent"] else "CONSISTENCY VIOLATIONS"
    for name, result in report["scenarios"].items():
        for note in result.get("stack_disruptions", []):
            lines.append(f"stack disruption in {name}: {note} (the stack is shared)")
    lines.append("")
    lines.append(f"checker: {verdict}; results in {report['run']['out_dir']}")
    return "\n".join(lines)


def write_json(path: Path, report: Mapping[str, Any]) -> None:
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


# ---------------------------------------------------------------- charts


def charts(report: Mapping[str, Any], out_dir: Path) -> list[str]:
    """PNG charts for what this run measured; returns their file names."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []
    scenarios = report["scenarios"]
    base = report["baselines"]

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        made.append(name)

    direct = scenarios.get("direct")
    opened = [p for p in (direct or {}).get("phases", []) if p["mode"] == "open"]
    if direct is not None and opened:
        points = sorted(opened, key=lambda p: float(p["offered_rate"]))
        xs = [p["offered_rate"] for p in points]
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
            ax.plot(xs, [p["send_to_ack_ms"][key] for p in points], style, label=f"send->ack {key}")
        ax.plot(
            xs, [p["send_to_deliver_ms"]["p99"] for p in points], "v--", label="send->deliver p99"
        )
        store = direct.get("store_at_half_load")
        if store:
            ax.axhline(
                2 * store["per_send_ms"]["p99"],
                color="grey",
                ls=":",
                label="2 x store p99 at half load",
            )
        top = next((p for p in direct["phases"] if p["mode"] == "closed"), None)
        if top is not None:
            ax.axvline(top["acked_per_s"], color="tab:red", ls=":", label="closed-loop max")
        ax.set_xlabel("offered load (open loop), sends/s")
        ax.set_ylabel("latency, ms")
        ax.set_yscale("log")
        ax.set_title("direct: latency percentiles against offered load")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, "latency-vs-load.png")

    cost = (direct or {}).get("cpu_cost")
    fit = (cost or {}).get("per_acked_send") or {}
    if cost and cost["points"]:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs = [p["acked_per_s"] for p in cost["points"]]
        ax.plot(xs, [p["app_cpu_pct"] for p in cost["points"]], "o", label="load phases")
        if cost["idle_measured_pct"] is not None:
            ax.plot([0], [cost["idle_measured_pct"]], "s", color="grey", label="idle, measured")
        if fit.get("cpu_ms") is not None:
            top = max(xs)
            ax.plot(
                [0, top],
                [fit["intercept_pct"], fit["intercept_pct"] + fit["cpu_ms"] / 10 * top],
                "--",
                label=f"{fit['cpu_ms']:.2f} ms per acked send",
            )
        ax.set_xlabel("acknowledged sends/s")
        ax.set_ylabel("app CPU, % of one core")
        ax.set_title("direct: app CPU against load")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, "cpu-vs-load.png")

    for name, result in scenarios.items():
        phases = _phases(result)
        if not phases or not any(p["timeline"] for p in phases):
            continue
        fig, ax = plt.subplots(figsize=(7, 3.5))
        offset = 0.0
        for phase in phases:
            ts = [offset + e["t"] for e in phase["timeline"]]
            ax.plot(ts, [e["acked_per_s"] for e in phase["timeline"]], color="tab:blue")
            ax.plot(ts, [e["deliveries_per_s"] for e in phase["timeline"]], color="tab:orange")
            if ts:
                ax.axvline(offset, color="grey", lw=0.5)
                ax.text(offset, 0, f" {phase['label']}", fontsize=7, va="bottom")
                offset = ts[-1] + 1
        ax.plot([], [], color="tab:blue", label="acked sends/s")
        ax.plot([], [], color="tab:orange", label="deliveries/s")
        ax.set_xlabel("seconds (measured windows, back to back)")
        ax.set_ylabel("per second")
        ax.set_title(f"{name}: throughput over time")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, f"throughput-{name}.png")

    group = scenarios.get("group")
    if group is not None and group["sizes"]:
        sizes = [s["members"] for s in group["sizes"]]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(
            sizes,
            [s["phase"]["deliveries_per_s"] for s in group["sizes"]],
            "o-",
            label="deliveries/s",
        )
        ax.plot(
            sizes, [s["phase"]["acked_per_s"] for s in group["sizes"]], "s--", label="acked sends/s"
        )
        echo = (base.get("echo") or {}).get("round_trips_per_s")
        if echo:
            ax.axhline(echo, color="grey", ls=":", label="WebSocket echo round trips/s")
            ax.axhline(echo / 2, color="tab:red", ls=":", label="target: 0.5 x echo")
        ax.set_xscale("log")
        ax.set_xlabel("members per group")
        ax.set_ylabel("per second")
        ax.set_title("group: deliveries/s against group size")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, "deliveries-vs-group-size.png")
    return made
