"""Static checks that catch real bugs: undefined names, unused imports, syntax errors."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyflakes_rules_pass():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is part of the test extra: pip install -e .[test]"
    completed = subprocess.run(
        [ruff, "check", "--no-cache", "--select", "F,E9", "genserve", "client", "export", "benchmarks", "model_repository", "tests"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
