"""scripts/audit-deps's decision on pip-audit's JSON report (no network: the reports are made
here): a fixable vulnerability fails, an unfixed one is reported, unaudited ones fail only when
strict."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "audit-deps"


def _load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("audit_deps", str(SCRIPT))
    spec = importlib.util.spec_from_loader("audit_deps", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


audit = _load()


def _dep(name: str, *vulns: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "version": "1.0", "vulns": list(vulns)}


def _vuln(vuln_id: str, *fixes: str) -> dict[str, Any]:
    return {"id": vuln_id, "fix_versions": list(fixes), "aliases": ["CVE-0000-1"]}


def test_a_vulnerability_with_a_fix_fails() -> None:
    report = {"dependencies": [_dep("ok"), _dep("bad", _vuln("PYSEC-1", "1.2", "2.0.1"))]}
    status, lines = audit.decide(report, strict=False)
    assert status == 1
    assert any("bad 1.0: PYSEC-1, CVE-0000-1 (fixed in 1.2, 2.0.1)" in line for line in lines)


def test_a_vulnerability_without_a_fix_is_reported_but_passes() -> None:
    report = {"dependencies": [_dep("meh", _vuln("GHSA-x"))]}
    status, lines = audit.decide(report, strict=True)
    assert status == 0
    assert any("meh 1.0: GHSA-x" in line and "no fix" in line for line in lines)


def test_a_fix_anywhere_fails_even_next_to_unfixed_ones() -> None:
    report = {"dependencies": [_dep("a", _vuln("V1"), _vuln("V2", "3.0"))]}
    assert audit.decide(report, strict=False)[0] == 1


def test_clean_report_passes() -> None:
    status, lines = audit.decide({"dependencies": [_dep("a"), _dep("b")]}, strict=True)
    assert status == 0
    assert lines[0] == "audit-deps: 2 dependencies audited, 0 not audited"


@pytest.mark.parametrize(("strict", "expected"), [(False, 0), (True, 2)])
def test_unaudited_dependencies_fail_only_when_strict(strict: bool, expected: int) -> None:
    report = {"dependencies": [_dep("a"), {"name": "b", "skip_reason": "not found"}]}
    status, lines = audit.decide(report, strict=strict)
    assert status == expected
    assert any("NOT AUDITED" in line for line in lines)
    assert "  b: not found" in lines


@pytest.mark.parametrize(
    ("pip_audit_status", "strict", "expected"),
    [(1, False, 0), (1, True, 2), (2, False, 2)],  # 1: service unreachable; 2: usage error
)
def test_no_report_from_pip_audit(
    monkeypatch: pytest.MonkeyPatch, pip_audit_status: int, strict: bool, expected: int
) -> None:
    monkeypatch.setattr(audit, "run_pip_audit", lambda *_: (pip_audit_status, "boom", None))
    monkeypatch.delenv("AUDIT_DEPS_STRICT", raising=False)
    assert audit.main(["--strict"] if strict else []) == expected


def test_main_passes_the_report_to_the_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    report = {"dependencies": [_dep("bad", _vuln("PYSEC-2", "9.9"))]}
    monkeypatch.setattr(audit, "run_pip_audit", lambda *_: (1, "", report))
    assert audit.main([]) == 1
