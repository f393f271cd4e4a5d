"""The price of a message: the app's CPU as a straight line over the load it carried.

Each load phase is one point: x the measured rate (acknowledged sends/s, or deliveries/s), y the
app processes' CPU (% of one core, summed over processes and workers, averaged over the phase
and its warm-up). A least-squares line through the points gives the CPU per further message
(the slope: % of a core per message/s, so x 10 = ms of CPU per message) and the CPU at rest
(the intercept). The measured idle point (every client connected, nothing sent) is reported
beside it, not fitted: the line describes the loaded regime.

The sweep's open-loop phases are the points (the closed-loop maximum sits at saturation, where
the line bends); without open-loop phases every phase is a point. With a single point and a
measured idle point the slope is the line through the two (no r²); with fewer, no slope.
Per acknowledged send and per delivery are two views of the same CPU, not shares of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs


@attrs.frozen
class Line:
    slope: float
    intercept: float
    r2: float | None


def least_squares(points: Sequence[tuple[float, float]]) -> Line | None:
    """The least-squares line through ``points`` (None with fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return None
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx <= 0:
        return None
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    syy = sum((y - mean_y) ** 2 for _, y in points)
    if n == 2:
        r2 = None  # two points always fit
    elif syy <= 0:
        r2 = 1.0
    else:
        residual = sum((y - (intercept + slope * x)) ** 2 for x, y in points)
        r2 = 1.0 - residual / syy
    return Line(slope, intercept, r2)


def _fit(points: Sequence[tuple[float, float]], idle: float | None) -> tuple[Line | None, str]:
    line = least_squares(points)
    if line is not None:
        return line, f"least squares over {len(points)} load points"
    if len(points) == 1 and idle is not None and points[0][0] > 0:
        x, y = points[0]
        return Line((y - idle) / x, idle, None), "line through the idle point and 1 load point"
    return None, "not enough points (needs 2 load points, or 1 and the idle point)"


def cpu_cost(phases: Sequence[Mapping[str, Any]], idle: Mapping[str, Any] | None) -> dict[str, Any]:
    """App CPU per acknowledged send and per delivery (ms), and at rest (% of a core)."""
    chosen = [p for p in phases if p.get("mode") == "open"] or list(phases)
    chosen = [p for p in chosen if p.get("app_cpu_pct") is not None]
    idle_pct = None if idle is None else float(idle["app_cpu_pct"])
    out: dict[str, Any] = {
        "points": [
            {
                "label": p["label"],
                "acked_per_s": p["acked_per_s"],
                "deliveries_per_s": p["deliveries_per_s"],
                "app_cpu_pct": p["app_cpu_pct"],
            }
            for p in chosen
        ],
        "idle_measured_pct": idle_pct,
        "idle_seconds": None if idle is None else idle["seconds"],
    }
    for key, rate in (("acked_send", "acked_per_s"), ("delivery", "deliveries_per_s")):
        points = [(float(p[rate]), float(p["app_cpu_pct"])) for p in chosen if p[rate] > 0]
        line, method = _fit(points, idle_pct)
        out[f"per_{key}"] = {
            "cpu_ms": None if line is None else round(line.slope * 10, 3),
            "intercept_pct": None if line is None else round(line.intercept, 1),
            "r2": None if line is None or line.r2 is None else round(line.r2, 3),
            "points": len(points),
            "method": method,
        }
    return out


def describe(cost: Mapping[str, Any]) -> str:
    """One line, e.g. ``app CPU per acked send: 6.8 ms (least squares over 4 load points,
    r²=0.98); per delivery 3.4 ms; at rest 11 % of a core (intercept), idle measured 9 %``."""
    parts = []
    for key, what in (("acked_send", "per acked send"), ("delivery", "per delivery")):
        fit = cost[f"per_{key}"]
        if fit["cpu_ms"] is None:
            parts.append(f"app CPU {what}: - ({fit['method']})")
            continue
        r2 = "" if fit["r2"] is None else f", r²={fit['r2']:.2f}"
        parts.append(f"app CPU {what}: {fit['cpu_ms']:.2f} ms ({fit['method']}{r2})")
    intercept = cost["per_acked_send"]["intercept_pct"]
    if intercept is not None:
        parts.append(f"at rest (intercept): {intercept:.1f} % of a core")
    if cost["idle_measured_pct"] is not None:
        parts.append(
            f"idle measured: {cost['idle_measured_pct']:.1f} % of a core over "
            f"{cost['idle_seconds']:g} s"
        )
    return "; ".join(parts)
