"""The Triton model repository of the stack.

Each model is a folder in the Triton layout, ``NAME/config.pbtxt`` plus ``NAME/1/model.py`` for Python
backend models. The model code stays thin: the work is done by importable ``genserve`` modules, so
that the same function runs in-process (tests, benchmarks) and behind the server.
"""

from pathlib import Path

REPOSITORY_DIR = Path(__file__).resolve().parent
