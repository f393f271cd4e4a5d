"""The design record resolves (docs/adr/0001): every ADR has a Confirmation section, and every
test, module, definition and import contract named in the ADRs and in the consistency model and
architecture documents exists. Reads files of the repository only.

What counts as a reference (outside fenced code blocks, in backticks):

- a Python file, optionally with a definition: ``tests/unit/test_checker.py``,
  ``src/messaging/durability/ingest.py::IngestService.send`` (``Class::method`` works too); a
  path without ``src/`` or ``tests/`` is looked up under ``src/messaging/``
  (``connection/gateway.py``);
- a repository path: ``docs/protocol.md``, ``tests/scenarios``;
- a module, optionally with a definition: ``messaging.client.checker``;
- an import-linter contract, written ``import contract `NAME```.

Inside Mermaid blocks, ``path.py`` and ``path.py::Name.attr`` are checked the same way.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADR_DIR = ROOT / "docs" / "adr"
INDEX = ADR_DIR / "README.md"
DOCS = ("docs/consistency-model.md", "docs/architecture.md", "docs/threat-model.md")
CHECKER = ROOT / "src" / "messaging" / "client" / "checker.py"
MAPPING_HEADING = "## MVP decisions → records"
SEED_DECISIONS = set(range(1, 11))

ADR_FILE = re.compile(r"^(\d{4})-[a-z0-9]+(?:-[a-z0-9]+)*\.md$")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`]+)`")
NAME = r"[A-Za-z_]\w*(?:(?:\.|::)[A-Za-z_]\w*)*"
CODE_REF = re.compile(rf"^(?P<path>[\w.-]+(?:/[\w.-]+)*\.py)(?:::(?P<name>{NAME}))?$")
MERMAID_REF = re.compile(rf"(?<![\w/.-])(?P<path>(?:[\w-]+/)*[\w-]+\.py)(?:::(?P<name>{NAME}))?")
REPO_PATH = re.compile(r"^(?:src|tests|docs)/[\w./*-]*$")
MODULE_REF = re.compile(r"^messaging(?:\.[A-Za-z_]\w*)+$")
NOT_MODULES = frozenset({"messaging.v1"})  # the WebSocket subprotocol's name
CONTRACT_REF = re.compile(r"import\s+contract\s+`([^`]+)`")
ADR_LINK = re.compile(r"\]\((\d{4}-[^)#\s]+\.md)(?:#[^)]*)?\)")
ADR_NUMBER = re.compile(r"\b(\d{4})\b")
MVP_DECISION = re.compile(r"^(\d+)\b")
HEADER_KEY = re.compile(r"^- (Status|Date|MVP decision|Amends|Supersedes)\b:?(.*)$", re.I)


# ---------------------------------------------------------------- reading the record


def adr_files() -> list[Path]:
    return sorted(p for p in ADR_DIR.glob("*.md") if ADR_FILE.match(p.name))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def split_fences(text: str) -> tuple[str, list[str]]:
    """The text without fenced code blocks, and the bodies of its Mermaid blocks."""
    mermaid = [m.group(2) for m in FENCE.finditer(text) if m.group(1) == "mermaid"]
    return FENCE.sub("", text), mermaid


def header(text: str) -> dict[str, str]:
    """The bullet list between the title and the first section, by key (``status``, ``date``,
    ``mvp decision``, ``amends``, ``supersedes``; the colon after the key is optional),
    continuation lines joined."""
    entries: dict[str, str] = {}
    key: str | None = None
    for line in text.split("\n## ", 1)[0].splitlines()[1:]:
        if line.startswith("- "):
            match = HEADER_KEY.match(line)
            key = match.group(1).lower() if match else None
            if match:
                entries[key] = match.group(2).strip()
        elif line.startswith("  ") and key is not None:
            entries[key] += " " + line.strip()
    return entries


def section(text: str, title: str) -> str | None:
    match = re.search(rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    return match.group(1) if match else None


def numbers(text: str) -> set[str]:
    """The records a text refers to: linked ones, and bare numbers of existing records (so that
    other four-digit numbers, such as close codes, are not taken for records)."""
    existing = {path.name[:4] for path in adr_files()}
    linked = {link[:4] for link in ADR_LINK.findall(text)}
    return linked | {n for n in ADR_NUMBER.findall(text) if n in existing}


def first_word(text: str) -> str:
    return re.split(r"[\s,;]", text.strip().lower(), maxsplit=1)[0]


# ---------------------------------------------------------------- resolving references


@cache
def contracts() -> frozenset[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return frozenset(c["name"] for c in config["tool"]["importlinter"]["contracts"])


@cache
def module_body(path: Path) -> list[ast.stmt]:
    return ast.parse(path.read_text(), filename=str(path)).body


def _statements(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements of a module or class body, including those under if/try/with blocks."""
    for node in body:
        yield node
        if isinstance(node, ast.If | ast.With | ast.AsyncWith):
            yield from _statements(node.body)
            yield from _statements(getattr(node, "orelse", []))
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _statements(block)
            for handler in node.handlers:
                yield from _statements(handler.body)


def _defines(body: Sequence[ast.stmt], parts: Sequence[str]) -> bool:
    """Whether ``parts`` (``Class``, ``method``, ...) names a definition in ``body``: a
    function, class or assignment, nested in classes or functions."""
    head, rest = parts[0], parts[1:]
    for node in _statements(body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == head and (not rest or _defines(node.body, rest)):
                return True
        elif not rest and isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == head for t in targets):
                return True
    return False


def resolve_code(path_text: str, name: str | None) -> str | None:
    """None when ``path_text`` (and ``name`` in it) exist, else what is wrong."""
    if path_text.startswith(("src/", "tests/")):
        candidates = [ROOT / path_text]
    else:
        candidates = [ROOT / "src" / "messaging" / path_text, ROOT / "src" / path_text]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        return f"no file {' or '.join(rel(c) for c in candidates)}"
    if name and not _defines(module_body(found), re.split(r"\.|::", name)):
        return f"no definition {name!r} in {rel(found)}"
    return None


def resolve_module(dotted: str) -> str | None:
    parts = dotted.split(".")
    for cut in range(len(parts), 1, -1):
        base = ROOT / "src" / Path(*parts[:cut])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                rest = parts[cut:]
                if rest and not _defines(module_body(candidate), rest):
                    return f"no definition {'.'.join(rest)!r} in {rel(candidate)}"
                return None
    return f"no module {dotted}"


def resolve_path(path_text: str) -> str | None:
    if "*" in path_text:
        return None if any(ROOT.glob(path_text)) else f"nothing matches {path_text}"
    return None if (ROOT / path_text.rstrip("/")).exists() else f"no such path {path_text}"


def references(text: str) -> tuple[list[str], list[str]]:
    """The references in a document, and what is wrong with each that does not resolve."""
    prose, mermaid = split_fences(text)
    found: list[str] = []
    problems: list[str] = []

    def note(reference: str, problem: str | None) -> None:
        found.append(reference)
        if problem is not None:
            problems.append(f"`{reference}`: {problem}")

    for span in SPAN.findall(prose):
        span = " ".join(span.split())
        if code := CODE_REF.match(span):
            note(span, resolve_code(code["path"], code["name"]))
        elif REPO_PATH.match(span):
            note(span, resolve_path(span))
        elif MODULE_REF.match(span) and span not in NOT_MODULES:
            note(span, resolve_module(span))
    for name in CONTRACT_REF.findall(prose):
        name = " ".join(name.split())
        note(f"import contract {name}", None if name in contracts() else "no such contract")
    for block in mermaid:
        for code in MERMAID_REF.finditer(block):
            note(code.group(0), resolve_code(code["path"], code["name"]))
    return found, problems


# ---------------------------------------------------------------- the ADRs


@pytest.fixture(params=adr_files(), ids=lambda p: p.name)
def adr(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


def test_there_are_records() -> None:
    assert len(adr_files()) >= 10, f"no ADRs found in {rel(ADR_DIR)}"


def test_a_record_has_a_title_status_and_date(adr: Path) -> None:
    text = adr.read_text()
    number = int(adr.name[:4])
    assert text.startswith(f"# {number}. "), f"{rel(adr)}: the title must start '# {number}. '"
    fields = header(text)
    assert fields.get("status"), f"{rel(adr)}: no '- Status:' line"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", fields.get("date", "")), f"{rel(adr)}: no date"


def test_a_record_has_a_confirmation_that_names_something(adr: Path) -> None:
    confirmation = section(adr.read_text(), "Confirmation")
    assert confirmation is not None, f"{rel(adr)}: no '## Confirmation' section"
    found, _ = references(confirmation)
    assert found, (
        f"{rel(adr)}: its Confirmation names no test, module or import contract "
        "(`tests/...py[::name]`, `src/...py[::name]`, `messaging.x`, import contract `NAME`)"
    )


def test_every_reference_in_a_record_resolves(adr: Path) -> None:
    _, problems = references(adr.read_text())
    assert not problems, f"{rel(adr)} names what does not exist:\n  " + "\n  ".join(problems)


def test_links_between_records_resolve(adr: Path) -> None:
    missing = [link for link in ADR_LINK.findall(adr.read_text()) if not (ADR_DIR / link).is_file()]
    assert not missing, f"{rel(adr)} links to missing records: {missing}"


# ---------------------------------------------------------------- index, mapping, amendments


def index_rows() -> dict[str, tuple[str, str]]:
    """Number -> (file, status cell) from the index's table of records."""
    rows: dict[str, tuple[str, str]] = {}
    for line in INDEX.read_text().splitlines():
        match = re.match(r"^\|\s*\[(\d{4})\]\(([^)]+)\)\s*\|(.*)\|\s*$", line)
        if match:
            cells = match.group(3).split("|")
            rows[match.group(1)] = (match.group(2), cells[-1].strip())
    return rows


def test_the_index_lists_every_record_with_its_status() -> None:
    rows = index_rows()
    problems = []
    for path in adr_files():
        number = path.name[:4]
        if number not in rows:
            problems.append(f"{path.name} is not listed in {rel(INDEX)}")
            continue
        link, status_cell = rows[number]
        status = header(path.read_text()).get("status", "")
        if link != path.name:
            problems.append(f"{rel(INDEX)} links {number} to {link}, the file is {path.name}")
        same = first_word(status_cell) == first_word(status)
        if not same or numbers(status_cell) != numbers(status):
            problems.append(
                f"{rel(INDEX)} gives {number} the status {status_cell!r}; "
                f"the record says {status!r}"
            )
    for number, (link, _) in rows.items():
        if not (ADR_DIR / link).is_file():
            problems.append(f"{rel(INDEX)} lists {number} as {link}, which does not exist")
    assert not problems, "\n".join(problems)


def mapping() -> list[tuple[int, str, set[str]]]:
    """(decision, record number, amending record numbers) from the index's mapping table."""
    table = section(INDEX.read_text(), MAPPING_HEADING.removeprefix("## "))
    assert table is not None, f"{rel(INDEX)} has no section {MAPPING_HEADING!r}"
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].isdigit():
            records = ADR_LINK.findall(cells[2])
            assert len(records) == 1, (
                f"{rel(INDEX)}: decision {cells[0]} must map to exactly one record, "
                f"not {records or 'none'}"
            )
            rows.append(
                (int(cells[0]), records[0][:4], {link[:4] for link in ADR_LINK.findall(cells[3])})
            )
    return rows


def test_each_seed_decision_maps_to_exactly_one_record() -> None:
    rows = mapping()
    counts = Counter(decision for decision, _, _ in rows)
    assert set(counts) == SEED_DECISIONS, (
        f"{rel(INDEX)}: the mapping covers decisions {sorted(counts)}, not 1..10"
    )
    repeated = sorted(d for d, n in counts.items() if n > 1)
    assert not repeated, f"{rel(INDEX)}: decision(s) {repeated} appear more than once"
    by_number = {path.name[:4]: path for path in adr_files()}
    claims: dict[int, list[str]] = {}
    for number, path in by_number.items():
        if match := MVP_DECISION.match(header(path.read_text()).get("mvp decision", "")):
            claims.setdefault(int(match.group(1)), []).append(number)
    problems = []
    for decision, record, amendments in rows:
        if record not in by_number:
            problems.append(f"decision {decision} maps to {record}, which does not exist")
            continue
        if claims.get(decision) != [record]:
            problems.append(
                f"decision {decision} maps to {record}, but '- MVP decision: {decision}' is in "
                f"the header of {claims.get(decision) or 'no record'}"
            )
        for amendment in sorted(amendments):
            path = by_number.get(amendment)
            if path is None or record not in numbers(header(path.read_text()).get("amends", "")):
                problems.append(f"{amendment} is listed as amending {record} but does not say so")
    assert not problems, f"{rel(INDEX)}, {MAPPING_HEADING!r}:\n" + "\n".join(problems)


def test_amendments_are_recorded_on_both_sides() -> None:
    """'- Amends: N' (or 'Supersedes') in a record and 'amended by' ('superseded by') in N's
    status go together (docs/adr/0001)."""
    by_number = {path.name[:4]: path for path in adr_files()}
    fields = {number: header(path.read_text()) for number, path in by_number.items()}
    problems = []
    for number, entries in fields.items():
        for verb, passive in (("amends", "amended by"), ("supersedes", "superseded by")):
            for earlier in sorted(numbers(entries.get(verb, ""))):
                status = fields.get(earlier, {}).get("status", "")
                said = status.lower().partition(passive)[2]
                if earlier not in by_number:
                    problems.append(f"{number} {verb} {earlier}, which does not exist")
                elif number not in numbers(said):
                    problems.append(
                        f"{number} {verb} {earlier}, but {earlier}'s status does not say "
                        f"'{passive} {number}': {status!r}"
                    )
        status = entries.get("status", "").lower()
        for verb, passive in (("amends", "amended by"), ("supersedes", "superseded by")):
            if passive not in status:
                continue
            for later in sorted(numbers(status.partition(passive)[2])):
                if number not in numbers(fields.get(later, {}).get(verb, "")):
                    problems.append(
                        f"{number}'s status says '{passive} {later}', but {later} has no "
                        f"'- {verb.capitalize()}: {number}' line"
                    )
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the other design documents


@pytest.mark.parametrize("document", DOCS)
def test_the_design_documents_exist_and_their_references_resolve(document: str) -> None:
    path = ROOT / document
    assert path.is_file(), f"{document} is missing"
    found, problems = references(path.read_text())
    assert found, f"{document} names no test or module"
    assert not problems, f"{document} names what does not exist:\n  " + "\n  ".join(problems)


def test_the_architecture_has_mermaid_diagrams_naming_code() -> None:
    _, mermaid = split_fences((ROOT / "docs" / "architecture.md").read_text())
    assert mermaid, "docs/architecture.md has no Mermaid diagram"
    bare = [i for i, block in enumerate(mermaid, 1) if not MERMAID_REF.search(block)]
    assert not bare, f"docs/architecture.md: Mermaid diagram(s) {bare} name no module"


def test_the_consistency_model_names_every_checker_rule() -> None:
    kinds = [
        node.value.value
        for node in _statements(
            next(
                n.body
                for n in module_body(CHECKER)
                if isinstance(n, ast.ClassDef) and n.name == "ViolationKind"
            )
        )
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
    ]
    text = (ROOT / "docs" / "consistency-model.md").read_text()
    missing = [kind for kind in kinds if f"`{kind}`" not in text]
    assert kinds, "no ViolationKind members found in the checker"
    assert not missing, f"docs/consistency-model.md does not name the checker rule(s) {missing}"


# ---------------------------------------------------------------- the resolver itself


def test_broken_references_are_reported() -> None:
    """The resolver fails on what does not exist (so the tests above can fail)."""
    text = """
## Confirmation

- `tests/unit/test_checker.py::test_a_clean_history_passes`,
  `connection/gateway.py::Gateway._send`
- `tests/unit/test_nothing_here.py`, `tests/unit/test_checker.py::test_that_does_not_exist`
- `src/messaging/client/checker.py::ViolationKind.NO_SUCH_KIND`, `messaging.client.nowhere`
- import contract `No cycles between sibling packages`, import contract `No such contract`

```mermaid
flowchart LR
  A["durability/ingest.py::IngestService.send"] --> B["fanout/service.py::Nope.fan_out"]
```
"""
    found, problems = references(text)
    assert len(found) == 10
    reported = "\n".join(problems)
    for bad in (
        "test_nothing_here.py",
        "test_that_does_not_exist",
        "NO_SUCH_KIND",
        "messaging.client.nowhere",
        "No such contract",
        "Nope.fan_out",
    ):
        assert bad in reported, f"{bad} was not reported:\n{reported}"
    assert len(problems) == 6, reported
