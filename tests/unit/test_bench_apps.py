"""``messaging bench --apps 1,2,3`` (ADR 0031): one run per count, a table per count."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from messaging.bench.command import configure, options_from
from messaging.bench.report import apps_scaling, apps_scaling_table


def _phase(label: str, acked: float, p99: float, cpu: dict[str, float]) -> dict[str, Any]:
    return {
        "label": label,
        "mode": "closed",
        "acked_per_s": acked,
        "deliveries_per_s": 2 * acked,
        "send_to_ack_ms": {"p99": p99},
        "send_to_deliver_ms": {"p99": p99 + 10},
        "processes": {
            **{k: {"cpu_pct_avg": v} for k, v in cpu.items()},
            "kafka": {"cpu_pct_avg": 50},
        },
    }


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(argv)


def test_apps_takes_a_list_of_counts() -> None:
    assert _parse("direct").apps == (1,)
    assert _parse("direct", "--apps", "1,2,3").apps == (1, 2, 3)
    with pytest.raises(SystemExit):
        options_from(_parse("direct", "--apps", "0,2"))
    with pytest.raises(SystemExit):
        options_from(_parse("direct", "--apps", "33"))


def test_one_row_per_count_and_group_size_with_the_apps_cpu_summed() -> None:
    results = {
        "direct@1apps": {"apps": 1, "phases": [_phase("direct", 100, 50, {"app1": 80})]},
        "direct@2apps": {
            "apps": 2,
            "phases": [_phase("direct", 150, 40, {"app1": 60, "app2": 55})],
        },
        "group@2apps": {
            "apps": 2,
            "sizes": [{"members": 10, "phase": _phase("g", 30, 90, {"app1": 20, "app2": 20})}],
        },
    }
    rows = apps_scaling(results)
    assert [(r["scenario"], r["apps"], r["phase"]) for r in rows] == [
        ("direct", 1, "direct"),
        ("direct", 2, "direct"),
        ("group", 2, "10 members"),
    ]
    assert rows[1]["app_cpu_pct"] == 115  # the app processes only, not Kafka
    assert rows[1]["ack_p99_ms"] == 40
    table = apps_scaling_table(rows)
    assert table[2].startswith("| direct | direct | 1 | 100 | 200 | 50.0 | 60.0 | 80 |")


def test_a_single_count_adds_no_table() -> None:
    results = {"direct": {"apps": 1, "phases": [_phase("direct", 100, 50, {"app1": 80})]}}
    assert apps_scaling(results) == []
