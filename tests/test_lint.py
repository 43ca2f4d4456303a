"""Static checks: ruff's rules as pyproject.toml configures them (undefined names, unused imports, import
order, bugbear, pyupgrade, line length) and one format for the whole tree."""

import ast
import io
import re
import shutil
import subprocess
import sys
import tokenize
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


# --- measured figures live in docs/, where they keep the conditions they were measured under ----------
# A figure in a code comment goes stale as the code changes around it. These patterns catch the usual
# forms (a time that something "took", a figure "here" or "on N cores", "3x faster"); a limit or a
# constant's value (``60 s queue timeout``, ``at most 2 GB``) matches none of them.
MEASURED_FIGURE = re.compile(
    r"\btook (about |roughly )?\d"
    r"|\b\d[\d.,]*(-\d[\d.,]*)? ?(ms|s|seconds|minutes|GB|MB|GiB|MiB)\b[^.;]*?"
    r"\b(here|on (this|one|two|\d+) (host|machine|cores?|CPU cores?))\b"
    r"|\b\d[\d.]*(-\d[\d.]*)?x (faster|slower|cheaper|the time)\b",
    re.IGNORECASE,
)
CODE_FOLDERS = ("genserve", "client", "export", "benchmarks", "model_repository")


def _python_prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python file, a docstring's lines joined so that
    a figure split across two lines is still one sentence."""
    source = path.read_text(encoding="utf-8")
    prose = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                prose.append((node.body[0].lineno, " ".join(docstring.split())))
    return prose


def _shell_comments(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(number, line) for number, line in enumerate(lines, 1) if line.lstrip().startswith("#")]


def test_measured_figures_are_in_the_docs_not_in_code_comments():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {match.group(0)!r} in {text.strip()[:120]!r}"
        for path, prose in [
            *((path, _python_prose(path)) for folder in CODE_FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))),
            *((path, _shell_comments(path)) for path in sorted((ROOT / "scripts").glob("*.sh"))),
        ]
        for line, text in prose
        for match in [MEASURED_FIGURE.search(text)]
        if match
    ]
    assert not found, "move these measurements to docs/*.md (with how and when measured):\n" + "\n".join(found)


def test_the_measured_figure_pattern_tells_measurements_from_limits():
    measurements = [
        "a 50 MP photo took 43-48 s and 2.8 GB per worker",
        "about 95 ms per face on one core here",
        "each upsampling halves that (and costs 4-5x the time)",
        "everything (about 23 minutes on 2 CPU cores, 540 tests)",
        "a [1, 3, 6000, 6000] float tensor, 432 MB: 3-6 s here",
        "ONNX Runtime is 3x faster",
    ]
    limits = [
        "8 requests queued, 60 s queue timeout",
        "at most 2 GB",
        "wait (2 s at most) until the served model has counted every request",
        "Protobuf refuses messages over 2 GiB; keep a margin for the graph itself.",
        "images are refused above 64 MiB of bytes, 50 MP or 16384 px a side",
    ]
    assert [text for text in measurements if not MEASURED_FIGURE.search(text)] == []
    assert [text for text in limits if MEASURED_FIGURE.search(text)] == []
