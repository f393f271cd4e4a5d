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
    )
    assert report["consistent"] is True
    assert report["failed_scenarios"] == []
    assert set(report["baselines"]) == {"dynamodb", "kafka", "echo"}
    direct = report["scenarios"]["direct"]
    (phase,) = direct["phases"]
    assert phase["acked"] > 0
    assert phase["send_to_ack_ms"]["count"] == phase["acked"]
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
    )
    assert report["consistent"] is True
    (size,) = report["scenarios"]["group"]["sizes"]
    assert size["members"] == 10
    assert size["phase"]["deliveries"] > 0
    for verdict in checker_verdicts(report["scenarios"]["group"]):
        assert verdict["ok"] is True, verdict["first"]
