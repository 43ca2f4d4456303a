"""Configuration in one place: ports, limits and locations shared by server, models and client."""

from __future__ import annotations

import os
from pathlib import Path

# Triton's own defaults, so that a stock client finds the server.
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_HOST = "localhost"
# Where the server listens: this host only. Every interface (0.0.0.0) is an explicit choice.
DEFAULT_BIND_ADDRESS = "127.0.0.1"

# Set in the server's environment when it runs a response cache (genserve serve --cache-size): a
# pipeline model with response_cache enabled then refuses an unseeded request, which must not be cached.
RESPONSE_CACHE_ENV = "GENSERVE_RESPONSE_CACHE_BYTES"

# Seconds `genserve serve` waits for every model to load before giving up.
SERVER_START_TIMEOUT_S = float(os.environ.get("GENSERVE_SERVER_START_TIMEOUT", "300"))

# Input images: refuse before decoding what would not fit in memory or take minutes to process.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000  # about 8660 x 5770; a 20000 x 20000 image (400 MP) is refused
MAX_IMAGE_SIDE = 16_384
# The image formats accepted (as Pillow names them; MPO is the multi-picture JPEG of many cameras). A
# GIF is read as its first frame. Anything else (TIFF, ICO, PPM...) is refused from its header.
IMAGE_FORMATS = ("JPEG", "PNG", "WebP", "BMP", "GIF")
_PILLOW_FORMATS = {"MPO": "JPEG"}


def image_format(pillow_format: str | None) -> str | None:
    """The accepted format Pillow's name stands for, or None when it is not accepted."""
    name = _PILLOW_FORMATS.get(pillow_format or "", pillow_format or "")
    return next((known for known in IMAGE_FORMATS if known.upper() == name.upper()), None)


def image_formats_text() -> str:
    return ", ".join(IMAGE_FORMATS[:-1]) + " or " + IMAGE_FORMATS[-1]


# Face swap works on the whole photo (detection upsampled, a dense warp): its time and memory grow with
# the pixels (figures: docs/hardening.md, "Bounded work"). 12.5 MP takes a 4032 x 3024 phone photo.
MAX_FACE_SWAP_PIXELS = 12_500_000
# Request fields other than images: a request's OPTIONS (one flat JSON object) is bounded before it is
# parsed (bytes, nesting, keys, digits of a number), text fields by length; and an error message names
# the field and the limit without echoing the input (gRPC carries it in size-limited metadata).
MAX_OPTIONS_BYTES = 64 * 1024
MAX_OPTIONS_DEPTH = 4
MAX_OPTIONS_KEYS = 64
MAX_NUMBER_DIGITS = 32
MAX_TEXT_CHARS = 64 * 1024
MAX_ERROR_MESSAGE_CHARS = 1000

# Triton's model-control, shared-memory, logging and trace APIs answer only requests that carry this
# header with the server's admin key (Triton's --http-restricted-api / --grpc-restricted-protocol).
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
ADMIN_KEY_HEADER = "genserve-admin-key"
ADMIN_KEY_ENV = "GENSERVE_ADMIN_KEY"  # the key itself; or GENSERVE_ADMIN_KEY_FILE names a file holding it
ADMIN_KEY_FILE_ENV = "GENSERVE_ADMIN_KEY_FILE"

# Supervision of a running server (genserve.supervision): how often worker processes are checked, how
# often one model's workers may be replaced before the server is declared unhealthy, and the size of
# a worker's shared-memory region (grown by one large request, never shrunk) that gets it replaced.
WATCH_INTERVAL_S = 1.0
MAX_WORKER_RESTARTS = 5
WORKER_RESTART_WINDOW_S = 300.0
WORKER_SHM_RECLAIM_BYTES = 256 * 1024 * 1024
# The other workers of a copy replaced because one of its workers died are ended after this long (that
# copy never unloads): time enough to finish the requests they run.
RETIRED_WORKER_GRACE_S = 30.0
# Triton's gRPC front end keeps request objects for reuse (8 by default), each holding the buffer of the
# largest request it carried, for good (what refused large tensors left behind: docs/hardening.md).
# None kept; and glibc gives freed heap back above 1 MiB (instead of its dynamic threshold, up to 64 MiB).
GRPC_INFER_ALLOCATION_POOL_SIZE = 0
MALLOC_TRIM_THRESHOLD_BYTES = 1024 * 1024
# Blocks above 64 KiB are mapped on their own and unmapped when freed: gRPC's buffers of a refused huge
# request no longer stay in glibc's arenas. The model workers inherit it; what it saves and costs is
# measured by python -m genserve.benchmarks.malloc (figures: docs/hardening.md).
MALLOC_MMAP_THRESHOLD_BYTES = 64 * 1024
# `genserve serve` on SIGTERM: keep serving this long (endpoints and clients learn that the replica is
# going), then let in-flight requests finish within the drain timeout (Triton's --exit-timeout-secs).
DRAIN_DELAY_S = 5.0
DRAIN_TIMEOUT_S = 60.0
# After a drain emptied the server, how long its other models may take to unload before a streaming
# model that Triton never unloads (its queue refused a streamed request: genserve.drain.wait_for_unload)
# is no longer waited for.
STUCK_UNLOAD_GRACE_S = 3.0
# How the server tells its models that it drains (genserve.triton.requests): this variable names a file
# that exists while it does. Calls between models (BLS) carry this request id, so that a draining model
# still answers the work of requests already running.
DRAIN_FILE_ENV = "GENSERVE_DRAIN_FILE"
BLS_REQUEST_ID = "genserve-bls"

# ONNX Runtime sessions (genserve.onnx_sessions): after a call whose inputs exceed this many bytes, ONNX
# Runtime's arena gives its unused memory back (a large request would otherwise keep it for good).
ARENA_SHRINK_ABOVE_BYTES = 16 * 1024 * 1024
# And once a session's calls stop for ARENA_IDLE_S while its process holds more than ARENA_IDLE_BUDGET_BYTES of
# anonymous memory beyond what it held when the session was opened, its arena is given back
# (genserve.onnx_sessions.IdleShrink): a leaf keeps its warm arena while busy, not the peak of one large request
# for good (a VAE decoder's mid-block attention at a large size: docs/diffusion-serving.md, "Memory").
ARENA_IDLE_S = 5.0
ARENA_IDLE_BUDGET_BYTES = 32 * 1024 * 1024

# Requests a diffusion pipeline holds waiting beside those it runs (stream_backlog). The diffusion models keep
# that bound themselves and have no Triton queue policy: in Triton 2.51 a queue policy turns off the batcher's
# prefetching, and its batcher then dispatches a request queued while every instance was busy only when the
# next request arrives or 500 ms later (genserve.triton.model_config.unbounded_queue; docs/diffusion-serving.md,
# "Triton's batcher and queue policies").
PIPELINE_WAITING = 8
# The most samples one batched leaf call holds (build-repo's max_batch_size) and the largest side a request
# may ask for: TensorRT profiles (genserve export) cover both, so the engines serve what the configs accept.
LEAF_MAX_BATCH_SIZE = 8
MAX_GENERATED_SIDE = 2048
# What `genserve export`'s TensorRT profiles cover unless told: component batch sizes (the first the
# optimum; up to build-repo's leaf max batch) and the builder's scratch memory per layer tactic.
EXPORT_BATCH_SIZES = (1, LEAF_MAX_BATCH_SIZE)
TENSORRT_WORKSPACE_GB = 8.0
# What each pipeline model serves unless build-repo says otherwise (BuildOptions, serving.json and the
# service read these): images per request, and requests one instance runs at once (plain and streaming).
MAX_IMAGES = 4
PIPELINE_CONCURRENCY = 4
# The model whose one process runs the diffusers pipelines of every pipeline model of a repository
# (genserve.triton.pipeline_host; build-repo --pipeline-host names another). The pipeline models relay to it,
# and check every RELAY_WATCH_S whether a request's client gave up or the host's process died; a request the
# host has not taken after RELAY_ACCEPT_S while no host process they know of lives is answered UNAVAILABLE.
PIPELINE_HOST_MODEL = "diffusion_pipelines"
# A streaming pipeline model reports a request's progress after its first denoising step and then after each
# step that ends this long or more after the last one reported: every step of a model whose steps take longer,
# ten reports a second at most (a progress bar needs no more) where steps are faster, whose every report costs
# the client, genserve's front, tritonserver and the pipeline model a message (docs/diffusion-serving.md).
PROGRESS_INTERVAL_S = 0.1
RELAY_WATCH_S = 0.1
RELAY_ACCEPT_S = 2.0
# Rows the batch runner (`genserve run`) keeps in flight at once.
RUN_CONCURRENCY = 4
# The denoiser leaf on the cpu target: two instances when it is small, so that two requests' steps run at
# once: a small graph's ops are too short for ONNX Runtime's intra-op threads to keep the cores busy, and
# a batch of two costs what two calls cost on a CPU. A larger denoiser keeps one instance, whose threads
# already fill the cores (a second one only oversubscribes them). Each instance keeps ONNX Runtime's
# threads (one per core). Measured in docs/benchmarks.md ("Threads against instances").
CPU_DENOISER_INSTANCES = 2
CPU_SMALL_DENOISER_BYTES = 8 * 2**20  # the demo's tiny denoisers (<= 1 MB); not its medium ones (16-64 MB)
# A pipeline model on the cpu target whose denoiser is large runs one request at a time (plain and
# streaming alike): the leaves' threads already fill the cores, and requests in flight together only make
# the leaves compete for them, their denoiser calls merged into batches that cost on a CPU what separate
# calls cost. A small denoiser's pipelines keep PIPELINE_CONCURRENCY. Measured in docs/benchmarks.md
# ("Requests at once on a CPU").
CPU_LARGE_PIPELINE_CONCURRENCY = 1
# ONNX Runtime's CUDA provider in every diffusion leaf on a GPU, as the onnxruntime backend's config
# parameters spell them (the Python-backend leaf reads the same keys; docs/diffusion-serving.md, "GPU
# settings"). Arena growth as requested (1), not to the next power of two (0), which can reserve up to
# twice a multi-GB activation; cuDNN convolution algorithms by heuristic (1), not by exhaustive timing
# (0), which stalls the first request at every new image size and allocates large trial workspaces.
ORT_CUDA_PARAMETERS = {"arena_extend_strategy": "1", "cudnn_conv_algo_search": "1"}


def stream_backlog(concurrency: int) -> int:
    """How many requests a pipeline model holds (running and waiting) before it refuses the next, plain and
    streaming alike: its workers plus PIPELINE_WAITING. The model keeps the bound itself
    (genserve.triton.pipeline_models), and the pipeline host keeps it for both twins together."""
    return concurrency + PIPELINE_WAITING


# Clients: the deadline of one call (retries included), and how failures that may pass are retried.
CLIENT_TIMEOUT_S = 600.0
CLIENT_RETRIES = 4
CLIENT_BACKOFF_S = 0.5
CLIENT_MAX_BACKOFF_S = 10.0
# The largest request the server takes (genserve.front refuses a larger one, RESOURCE_EXHAUSTED, before
# tritonserver sees a byte): the largest one a contract allows, the face swap's images (two MAX_IMAGE_BYTES together),
# plus room for text fields, OPTIONS and protobuf framing (tests/test_protocol.py checks every contract fits).
MAX_REQUEST_BYTES = 2 * MAX_IMAGE_BYTES + 4 * 1024 * 1024
# The front refuses an HTTP body whose JSON nests deeper than this (400) before Triton has it whole: Triton's
# recursive JSON parser crashed on 120,000 levels (issue 30). A real request nests 4 levels plus one per
# dimension of a tensor sent as nested lists; a model config sent with a load, about 10.
MAX_JSON_DEPTH = 64
# Requests above LARGE_REQUEST_BYTES (a face swap of two large photos; most requests are a few MB) are
# "large": the front lets at most MAX_LARGE_REQUESTS of them in at once, until answered, and refuses the
# next at once (UNAVAILABLE / 503, overloaded: a client retries it later or on another replica), so that
# a burst of them neither swells the server nor delays everyone else's requests.
LARGE_REQUEST_BYTES = 16 * 1024 * 1024
MAX_LARGE_REQUESTS = 2
# gRPC messages arrive whole (grpc-python has no partial reads): the front reads this many at once and
# hands each to tritonserver before the next is read, so that a burst of large ones is never held in the
# front together. A message still arriving after FRONT_READ_SLICE_S (a slow sender) lets the next one be
# read beside it.
FRONT_READ_SLOTS = 1
FRONT_READ_SLICE_S = 3.0
# How long the front keeps an idle HTTP connection to tritonserver open for the next request. Triton stops
# only once every connection to its HTTP port is closed: with aiohttp's default (15 s, checked as often) a
# stop after HTTP traffic waited 20-30 s for the front's idle connections.
FRONT_UPSTREAM_KEEPALIVE_S = 1.0

# The OpenAI Images API on the HTTP port (genserve.front.openai_api): images asked for as a URL are kept this
# long, and this much of them at most (the oldest dropped first), in the front's memory.
OPENAI_URL_TTL_S = 600.0
OPENAI_URL_MAX_BYTES = 256 * 1024 * 1024

# Task files (genserve run): an index names an output file (imgs/<index>.jpg) and a cell of result.csv.
MAX_INDEX_BYTES = 128  # UTF-8 bytes: file names are limited to 255
# The contest's upload limit ("at most 2 GB"), read as 2·10⁹ bytes: the stricter of GB and GiB.
MAX_SUBMISSION_BYTES = 2 * 1000**3

# Where genserve keeps what it prepares at run time (server backends, demo pipelines, caches).
CACHE_DIR = Path(os.environ.get("GENSERVE_CACHE_DIR", Path.home() / ".cache" / "genserve"))


def _stack_repository() -> Path:
    # A wheel installs the top-level model_repository/ as data beside the package
    # (site-packages/genserve/model_repository); a checkout (editable install) has it at its root. It holds
    # no Python package of its own: Triton, given the folder, would try to load a __pycache__ as a model.
    package = Path(__file__).resolve().parent
    installed = package / "model_repository"
    return installed if installed.is_dir() else package.parent / "model_repository"


# The stack's own Triton model repository (face swap, OCR): `genserve serve` loads it, and so does
# `tritonserver --model-repository model_repository` in the NGC container.
STACK_REPOSITORY_DIR = _stack_repository()

# Photos with faces for the face-swap tests and benchmarks: the checkout's sibling shared/data/faces
# (where this project keeps them), or GENSERVE_FACES_DIR. The demo brings two of its own.
FACES_DIR = Path(
    os.environ.get("GENSERVE_FACES_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "faces")
)


def grpc_url(host: str = DEFAULT_HOST, port: int = DEFAULT_GRPC_PORT) -> str:
    return f"{host}:{port}"


def http_url(host: str = DEFAULT_HOST, port: int = DEFAULT_HTTP_PORT) -> str:
    return f"{host}:{port}"
