"""docs/capacity.md: every figure names its source or command, and the per-message DynamoDB and
Kafka figures are what ``scripts/message-cost`` prints for the code as it is (ADR 0031)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "capacity.md"
SOURCE = re.compile(
    r"https?://|`[^`]+`|ADR \d{4}|docs/\S+|scripts/\S+|src/\S+|above|assumed|the issue|"
    r"from the mix"
)


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    found: list[tuple[list[str], list[list[str]]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            found.append((header, rows))
        else:
            i += 1
    return found


def test_every_figure_in_a_table_names_its_source() -> None:
    found = tables(DOC.read_text())
    assert len(found) >= 8
    for header, rows in found:
        assert header[-1] == "source", f"a table without a source column: {header}"
        for row in rows:
            assert len(row) == len(header), row
            assert SOURCE.search(row[-1]), f"no source or command: {row}"


def _cost(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "message-cost"), *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), ["11.00 WRU, 1.00 RRU", "7.92 WRU, 0.04 RRU", "value 302 B", "key 34 B", "406 B"]),
        (("--text-bytes", "1000"), ["13.00 WRU, 1.00 RRU", "1342 B in a batch of 1"]),
    ],
)
def test_the_per_message_figures_are_what_the_code_costs(
    args: tuple[str, ...], expected: list[str]
) -> None:
    output = _cost(*args)
    for figure in expected:
        assert figure in output, output
    doc = DOC.read_text()
    for figure in ("11 WRU + 1 RRU", "7.92 WRU + 0.04 RRU", "302 B", "34 B", "406 B", "348 B"):
        assert figure in doc
    assert "13 WRU + 1 RRU" in doc
    assert "1,342 B" in doc
    if not args:
        assert "348 B each in a batch of 24" in output, output
