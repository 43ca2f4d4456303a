"""Configuration in one place: ports, limits and locations shared by server, models and client."""

from __future__ import annotations

import os
from pathlib import Path

# Triton's own defaults, so that a stock client finds the server.
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_HOST = "localhost"
# Where the server listens: every interface, as Triton does; tests and benchmarks use loopback only.
DEFAULT_BIND_ADDRESS = "0.0.0.0"

# Set in the server's environment when it runs a response cache (genserve serve --cache-size): a
# pipeline model with response_cache enabled then refuses an unseeded request, which must not be cached.
RESPONSE_CACHE_ENV = "GENSERVE_RESPONSE_CACHE_BYTES"

# Seconds `genserve serve` waits for every model to load before giving up.
SERVER_START_TIMEOUT_S = float(os.environ.get("GENSERVE_SERVER_START_TIMEOUT", "300"))

# Input images: refuse before decoding what would not fit in memory or take minutes to process.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000  # about 8660 x 5770; a 20000 x 20000 image (400 MP) is refused
MAX_IMAGE_SIDE = 16_384

# Where genserve keeps what it prepares at run time (server backends, demo pipelines, caches).
CACHE_DIR = Path(os.environ.get("GENSERVE_CACHE_DIR", Path.home() / ".cache" / "genserve"))

# Photos with faces for the face-swap tests and benchmarks: the checkout's sibling shared/data/faces
# (where this project keeps them), or GENSERVE_FACES_DIR. The demo brings two of its own.
FACES_DIR = Path(os.environ.get("GENSERVE_FACES_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"))


def grpc_url(host: str = DEFAULT_HOST, port: int = DEFAULT_GRPC_PORT) -> str:
    return f"{host}:{port}"


def http_url(host: str = DEFAULT_HOST, port: int = DEFAULT_HTTP_PORT) -> str:
    return f"{host}:{port}"
