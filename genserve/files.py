"""File placement shared by export and build-repo."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` when both are on one file system (no second copy of the
    weights), else a copy; a file already at ``target`` is replaced."""
    Path(target).unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
