"""Triton's log file and the front's: written private, read back for what went wrong and for which models
Triton still holds (its endpoints are closed while it unloads; its log is not)."""

from __future__ import annotations

import os
import re
from pathlib import Path


def private_log(path: Path):
    """A log file readable by its owner only (it names models, requests' failures and paths), emptied."""
    log = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
    os.chmod(path, 0o600)  # a file that was there keeps its mode otherwise
    return log


def failure_summary(path: Path) -> str:
    """The last error lines of Triton's log (its last lines when none says error), for a failure's message."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    errors = [line for line in lines if line.startswith("E") or "error" in line.lower()]
    return "\n".join((errors or lines)[-15:])


def tail(path: Path, count: int = 15) -> str:
    """The last ``count`` lines of a log."""
    return "\n".join(path.read_text(errors="replace").strip().splitlines()[-count:])


def models_left_loaded(path: Path) -> list[str]:
    """The models Triton's log says it loaded and has not unloaded (yet), sorted: loaded more often than
    unloaded (a model reloaded to replace its workers has two copies, each unloaded on its own)."""
    from collections import Counter

    log = path.read_text(errors="replace") if path.exists() else ""
    loaded = Counter(re.findall(r"successfully loaded '([^']+)'", log))
    loaded.subtract(re.findall(r"successfully unloaded '([^']+)'", log))
    return sorted(name for name, count in loaded.items() if count > 0)
