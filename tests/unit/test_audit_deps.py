"""scripts/audit-deps's decision on pip-audit's JSON report (no network: the reports are made
here): a fixable vulnerability fails, an unfixed one is reported, unaudited ones fail only when
strict; and its fallback to PyPI's project JSON (a fake fetch: PyPI's advisories for the latest
release apply only to a pin that is that release)."""

from __future__ import annotations

import email.message
import importlib.machinery
import importlib.util
import urllib.error
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
    assert lines[0] == (
        "audit-deps: 2 dependencies: 2 audited (2 by pip-audit, 0 by PyPI's latest-release "
        "advisories), 0 vulnerable, 0 not audited"
    )


@pytest.mark.parametrize(("strict", "expected"), [(False, 0), (True, 2)])
def test_unaudited_dependencies_fail_only_when_strict(strict: bool, expected: int) -> None:
    report = {"dependencies": [_dep("a"), {"name": "b", "skip_reason": "not found"}]}
    status, lines = audit.decide(report, strict=strict)
    assert status == expected
    assert any("NOT AUDITED" in line for line in lines)
    assert "    b: not found" in lines


@pytest.mark.parametrize(
    ("pip_audit_status", "strict", "expected"),
    [(1, False, 0), (1, True, 2), (2, False, 2)],  # 1: service unreachable; 2: usage error
)
def test_no_report_from_pip_audit(
    monkeypatch: pytest.MonkeyPatch, pip_audit_status: int, strict: bool, expected: int
) -> None:
    """PyPI cannot be reached either: nothing is audited, which fails only when strict."""
    monkeypatch.setattr(audit, "run_pip_audit", lambda *_: (pip_audit_status, "boom", None))
    monkeypatch.delenv("AUDIT_DEPS_STRICT", raising=False)
    assert audit.main(["--strict"] if strict else [], fetch=_unreachable) == expected


def test_main_passes_the_report_to_the_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    report = {"dependencies": [_dep("bad", _vuln("PYSEC-2", "9.9"))]}
    monkeypatch.setattr(audit, "run_pip_audit", lambda *_: (1, "", report))
    assert audit.main([], fetch=_unreachable) == 1


# ---------------------------------------------------------- the latest-release fallback


def _unreachable(name: str) -> Any:
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def _advisory(vuln_id: str, *fixed_in: str, withdrawn: str | None = None) -> dict[str, Any]:
    return {
        "id": vuln_id,
        "aliases": ["CVE-2026-1"],
        "fixed_in": list(fixed_in),
        "withdrawn": withdrawn,
        "summary": "a summary",
        "details": "details",
    }


def _project(latest: str, *advisories: dict[str, Any]) -> dict[str, Any]:
    return {
        "info": {"version": latest},
        "releases": {"1.0": [], latest: []},
        "vulnerabilities": list(advisories),
    }


def _skipped(name: str) -> dict[str, Any]:
    return {"name": name, "skip_reason": f"Dependency not found on PyPI: {name}"}


def _fallback(
    pins: dict[str, str], projects: dict[str, Any], *, strict: bool = False
) -> tuple[int, list[str]]:
    """pip-audit skipped every pin; the fallback asks the fake PyPI (a missing project raises)."""

    def fetch(name: str) -> Any:
        if name not in projects:
            url = f"https://pypi.org/pypi/{name}/json"
            raise urllib.error.HTTPError(url, 404, "Not Found", email.message.Message(), None)
        return projects[name]

    report = {"dependencies": [_skipped(name) for name in pins]}
    return audit.decide(audit.complete_with_latest(report, pins, fetch), strict=strict)


def test_pin_is_latest_with_a_fixed_vulnerability_fails() -> None:
    project = _project("2.0", _advisory("PYSEC-9", "2.0.1"))
    status, lines = _fallback({"pkg": "2.0"}, {"pkg": project})
    assert status == 1
    assert lines[0].startswith("audit-deps: 1 dependencies: 1 audited (0 by pip-audit, 1 by PyPI")
    assert "1 vulnerable, 0 not audited" in lines[0]
    assert "  pkg 2.0: PYSEC-9, CVE-2026-1 (fixed in 2.0.1)" in lines


def test_pin_is_latest_with_an_unfixed_vulnerability_is_reported_but_passes() -> None:
    project = _project("2.0", _advisory("GHSA-new"), _advisory("GHSA-old-branch", "1.4.2"))
    status, lines = _fallback({"pkg": "2.0"}, {"pkg": project}, strict=True)
    assert status == 0
    assert "  pkg 2.0: GHSA-new, CVE-2026-1 (no fix available yet)" in lines
    # a fix only on an older line than the pin is no fix for the pin
    old_branch = "(no fix newer than 2.0; advisory fixed_in: 1.4.2)"
    assert f"  pkg 2.0: GHSA-old-branch, CVE-2026-1 {old_branch}" in lines
    assert "1 vulnerable" in lines[0]


def test_pin_older_than_latest_is_not_audited() -> None:
    projects = {"old": _project("2.0", _advisory("PYSEC-1", "2.0")), "new": _project("3.1")}
    pins = {"old": "1.0", "new": "3.1"}
    assert _fallback(pins, projects)[0] == 0
    status, lines = _fallback(pins, projects, strict=True)
    assert status == 2
    assert "1 audited (0 by pip-audit, 1 by PyPI's latest-release advisories)" in lines[0]
    assert "0 vulnerable, 1 not audited" in lines[0]
    assert any("PyPI serves advisories only for the latest release here (1):" in x for x in lines)
    assert "    old 1.0 (latest 2.0)" in lines
    # the latest release's advisory says nothing about the pin
    assert not any("PYSEC-1" in line for line in lines)


def test_the_not_audited_reason_names_the_pin_and_the_latest_release() -> None:
    entry = audit.audit_with_latest("old", "1.0", _project("2.0"))
    assert entry["skip_reason"] == (
        "pinned 1.0, latest 2.0; PyPI serves advisories only for the latest release here"
    )


def test_a_withdrawn_advisory_is_ignored() -> None:
    project = _project("2.0", _advisory("PYSEC-gone", "2.1", withdrawn="2026-01-02T03:04:05Z"))
    status, lines = _fallback({"pkg": "2.0"}, {"pkg": project}, strict=True)
    assert status == 0
    assert "0 vulnerable, 0 not audited" in lines[0]
    assert lines[-1] == "no known vulnerabilities"


@pytest.mark.parametrize(
    "fetched",
    [
        urllib.error.URLError("timed out"),
        TimeoutError("The read operation timed out"),
        ValueError("Expecting value: line 1 column 1 (char 0)"),  # not JSON
    ],
)
def test_a_fetch_error_is_not_audited_never_a_crash(fetched: Exception) -> None:
    def fetch(name: str) -> Any:
        if name == "flaky":
            raise fetched
        return _project("1.0")

    report = {"dependencies": [_skipped("flaky"), _skipped("fine")]}
    merged = audit.complete_with_latest(report, {"flaky": "1.0", "fine": "1.0"}, fetch)
    status, lines = audit.decide(merged, strict=True)
    assert status == 2
    assert "1 audited (0 by pip-audit, 1 by PyPI's latest-release advisories)" in lines[0]
    assert any("PyPI's project JSON could not be fetched" in line for line in lines)
    assert "    flaky 1.0" in lines


@pytest.mark.parametrize("project", [{}, {"info": {"version": "1.0"}}, [], "<html>", None])
def test_an_unusable_project_json_is_not_audited(project: Any) -> None:
    status, lines = _fallback({"pkg": "1.0"}, {"pkg": project}, strict=True)
    assert status == 2
    assert "0 audited" in lines[0]


def test_a_missing_project_is_not_audited() -> None:
    status, lines = _fallback({"pkg": "1.0"}, {})
    assert status == 0
    assert any("could not be fetched (HTTP 404)" in line for line in lines)


def test_only_what_pip_audit_skipped_is_fetched() -> None:
    asked: list[str] = []

    def fetch(name: str) -> Any:
        asked.append(name)
        return _project("1.0")

    report = {"dependencies": [_dep("audited"), _skipped("Skipped_Pkg"), _skipped("unpinned")]}
    merged = audit.complete_with_latest(report, {"audited": "1.0", "skipped-pkg": "1.0"}, fetch)
    assert asked == ["skipped-pkg"]
    status, lines = audit.decide(merged, strict=False)
    assert status == 0
    assert "2 audited (1 by pip-audit, 1 by PyPI's latest-release advisories)" in lines[0]
    assert "1 not audited" in lines[0]  # "unpinned": pip-audit's own reason is kept
    assert "    unpinned: Dependency not found on PyPI: unpinned" in lines


def test_no_report_from_pip_audit_falls_back_for_every_pin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requirements = tmp_path / "constraints.txt"
    requirements.write_text("# comment\nfoo==1.0\nBar_Baz==2.0  # trailing\n")
    monkeypatch.setattr(audit, "run_pip_audit", lambda *_: (1, "ConnectionError", None))
    projects = {"foo": _project("1.0"), "bar-baz": _project("2.0", _advisory("GHSA-1"))}
    assert audit.main(["--strict", str(requirements)], fetch=projects.__getitem__) == 0
    out = capsys.readouterr().out
    assert "2 audited (0 by pip-audit, 2 by PyPI's latest-release advisories)" in out
    assert "bar-baz 2.0: GHSA-1, CVE-2026-1 (no fix available yet)" in out


def test_read_pins(tmp_path: Path) -> None:
    requirements = tmp_path / "constraints.txt"
    requirements.write_text(
        "# header\n\nFlask==3.1.3\nboolean.py==5.0\nzope.interface==7.0 ; python_version > '3'\n"
        "-e .\nloose>=1\nwild==1.*\n"
    )
    assert audit.read_pins(requirements) == {
        "flask": "3.1.3",
        "boolean-py": "5.0",
        "zope-interface": "7.0",
    }
    assert audit.read_pins(tmp_path / "missing.txt") == {}
