"""The load tool works end to end (docs/benchmarks.md): ``messaging bench`` starts its own app
process on the running stack, logs users in through the OTP flow, runs a few seconds of load,
measures its baselines, checks the recorded histories and writes its report. This checks that
it works, not how fast: no figure is asserted, only the exit code, the report and the
checker's verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from messaging.settings import Settings

pytestmark = pytest.mark.integration


def bench(out: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-m", "messaging", "bench", *args, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    reports = list(out.glob("*/report.json"))
    assert len(reports) == 1, output
    report: dict[str, Any] = json.loads(reports[0].read_text())
    assert (reports[0].parent / "summary.md").is_file()
    return report


def checker_verdicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    parts = result.get("sizes") or [result]
    return [part["checker"] for part in parts]


async def test_direct_runs_with_its_baselines_and_passes_the_checker(
    stack: Settings, tmp_path: Path
) -> None:
    report = bench(
        tmp_path,
        "direct",
        "--duration",
        "3",
        "--warmup",
        "0.5",
        "--concurrency",
        "4",
        "--baseline-duration",
        "0.5",
        "--idle-duration",
        "1",
    )
    assert report["consistent"] is True
    assert report["failed_scenarios"] == []
    assert set(report["baselines"]) == {"dynamodb", "kafka", "echo"}
    direct = report["scenarios"]["direct"]
    (phase,) = direct["phases"]
    assert phase["acked"] > 0
    assert phase["send_to_ack_ms"]["count"] == phase["acked"]
    # The price of a message: one closed-loop phase and the idle point give a two-point line
    # (a sweep gives the least-squares slope); its value on a shared machine is not asserted,
    # and may even be negative in a 3 s run.
    assert direct["idle"]["seconds"] == 1
    assert direct["idle"]["app_cpu_pct"] >= 0
    cost = direct["cpu_cost"]
    for key in ("per_acked_send", "per_delivery"):
        assert isinstance(cost[key]["cpu_ms"], float), cost
        assert cost[key]["r2"] is None
        assert "idle point" in cost[key]["method"]
    assert phase["app_cpu_pct"] >= 0
    # The per-hop breakdown: every hop of the app measured something in the phase.
    hops = phase["server"]["hops"]
    assert phase["server"]["instances"]["differenced"] == 1
    for name in (
        "send frame in -> durable -> send_ack queued",
        "created -> published to Kafka (acknowledged)",
        "created -> consumed from Kafka by fanout",
        "created -> handed to the socket's process",
    ):
        assert hops[name]["count"] > 0, hops
        assert hops[name]["p50_ms"] is not None
        assert hops[name]["p99_ms"] >= hops[name]["p50_ms"]
    assert phase["client_hops"]["created -> live frame received by the client"]["count"] > 0
    # Duplicate and out-of-order frames, counted (the targets are for longer runs).
    frames = direct["delivery_frames"]
    assert frames["deliveries"] > 0
    assert frames["duplicate_ratio"] == pytest.approx(
        frames["duplicate_frames"] / frames["deliveries"], abs=1e-5
    )
    order = report["delivery_order"]["direct"]
    assert order["live_pushes"] > 0
    assert order["out_of_order_live_pushes"] >= 0
    assert any("duplicate message frames" in t["target"] for t in report["targets"])
    for verdict in checker_verdicts(direct):
        assert verdict["ok"] is True, verdict["first"]
        assert verdict["violations"] == 0
        assert verdict["acked_sends"] > 0
    assert any(ratio["limit"] == "DynamoDB API sends/s" for ratio in report["ratios"])


async def test_a_group_of_ten_runs_and_passes_the_checker(stack: Settings, tmp_path: Path) -> None:
    report = bench(
        tmp_path,
        "group",
        "--members",
        "10",
        "--duration",
        "3",
        "--warmup",
        "0.5",
        "--concurrency",
        "3",
        "--baselines",
        "none",
        "--idle-duration",
        "0",
    )
    assert report["consistent"] is True
    (size,) = report["scenarios"]["group"]["sizes"]
    assert size["members"] == 10
    assert size["phase"]["deliveries"] > 0
    # Without the idle point a single phase gives no CPU slope, and says so.
    assert size["idle"] is None
    assert size["cpu_cost"]["per_delivery"]["cpu_ms"] is None
    assert "not enough points" in size["cpu_cost"]["per_delivery"]["method"]
    assert size["delivery_frames"]["deliveries"] > 0
    for verdict in checker_verdicts(report["scenarios"]["group"]):
        assert verdict["ok"] is True, verdict["first"]
