"""Static checks: ruff's rules as pyproject.toml configures them (undefined names, unused imports, import
order, bugbear, pyupgrade, line length) and one format for the whole tree."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is part of the test extra: pip install -e .[test]"
    return subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_rules_pass():
    completed = _ruff("check", "--no-cache", ".")
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_the_tree_is_formatted():
    completed = _ruff("format", "--check", "--no-cache", ".")
    assert completed.returncode == 0, "run `ruff format .`:\n" + completed.stdout + completed.stderr
