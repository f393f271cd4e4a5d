"""The import-linter contracts are real: a plane importing another plane breaks the build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_contracts_hold_on_the_real_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    result = lint_imports(src)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_plane_importing_another_plane_is_rejected(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    with (src / "messaging" / "durability" / "__init__.py").open("a") as module:
        module.write("\nimport messaging.fanout  # deliberate violation\n")
    result = lint_imports(src)
    assert result.returncode != 0
    assert "messaging.durability -> messaging.fanout" in result.stdout


def test_domain_importing_an_io_library_is_rejected(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    with (src / "messaging" / "domain" / "__init__.py").open("a") as module:
        module.write("\nimport redis  # deliberate violation\n")
    result = lint_imports(src)
    assert result.returncode != 0
    assert "Domain and protocol are free of I/O libraries" in result.stdout
    assert "BROKEN" in result.stdout


def test_a_plane_service_importing_its_entry_point_is_rejected(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    with (src / "messaging" / "fanout" / "service.py").open("a") as module:
        module.write("\nimport messaging.fanout.consumer  # deliberate violation\n")
    result = lint_imports(src)
    assert result.returncode != 0
    assert "Fanout plane layers" in result.stdout
    assert "messaging.fanout.service -> messaging.fanout.consumer" in result.stdout


def test_an_adapter_importing_a_service_is_rejected(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    with (src / "messaging" / "fanout" / "adapters" / "redis_routing.py").open("a") as module:
        module.write("\nimport messaging.fanout.service  # deliberate violation\n")
    result = lint_imports(src)
    assert result.returncode != 0
    assert "Plane adapters implement ports" in result.stdout
