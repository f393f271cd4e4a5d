"""No absolute path of the machine the project was written on in what a reader of the repository
gets (README, docs, src, tests, scripts): such a path means nothing on their machine. A document
kept outside the repository is named in words instead (docs/failure-scenarios.md)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Spelled in pieces so that this file does not match itself.
MACHINE_PATH = re.compile("/" + "(?:work|root)" + "/")


def test_no_absolute_path_of_this_machine() -> None:
    files = [ROOT / "README.md"]
    for folder in ("docs", "src", "tests", "scripts"):
        files += [
            p for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts
        ]
    found = []
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [
            f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for n, line in enumerate(text.splitlines(), 1)
            if MACHINE_PATH.search(line)
        ]
    assert not found, "absolute paths of this machine:\n" + "\n".join(found)
