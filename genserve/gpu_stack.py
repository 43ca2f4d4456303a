"""The GPU stack genserve supports, as data: which NGC Triton release, and what it brings.

The image (docker/Dockerfile) installs genserve into the container's own Python, because the Python
backend's stub is built for that interpreter; so the container's Python must satisfy every pin. Its
onnxruntime backend decides which graphs the native leaves load (highest opset, bf16 inputs and
outputs), and its TensorRT which plans load (a plan loads only on the TensorRT that built it).
tests/test_gpu_stack.py holds pyproject.toml, the Dockerfile, the exports and docs/export.md to this.

Sources: each release's ``build.py`` in triton-inference-server/server (Triton and ONNX Runtime
versions), its release notes (Ubuntu and Python, CUDA, TensorRT), the onnxruntime_backend's
``src/onnxruntime_utils.cc`` on the release branch (bf16 accepted from r26.03 on), and a one-node graph
per opset opened with that ONNX Runtime's wheel (docs/export.md, "The supported GPU stack").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TritonRelease:
    tag: str  # nvcr.io/nvidia/tritonserver:<tag>-py3
    triton: str
    python: str  # the container's interpreter: every pin must install on it
    cuda: str
    onnxruntime: str  # what its onnxruntime backend is built with
    highest_opset: int  # the highest ai.onnx opset that ONNX Runtime opens
    bf16_io: bool  # its onnxruntime backend accepts TYPE_BF16 inputs and outputs
    tensorrt: str  # its TensorRT ("image": read from the image when it is built)

    @property
    def image(self) -> str:
        return f"nvcr.io/nvidia/tritonserver:{self.tag}-py3"


RELEASES: tuple[TritonRelease, ...] = (
    # What the stack was first written against: the pins need Python >= 3.11, bf16 leaves do not load.
    TritonRelease("24.10", "2.51.0", "3.10", "12.6.2", "1.19.2", 21, False, "10.5.0"),
    TritonRelease("24.12", "2.53.0", "3.12", "12.6.3", "1.20.1", 21, False, "10.7.0"),
    TritonRelease("26.06", "2.70.0", "3.12", "13.3.0", "1.24.4", 22, True, "image"),
)
SUPPORTED_TAG = "26.06"


def release(tag: str = SUPPORTED_TAG) -> TritonRelease:
    for candidate in RELEASES:
        if candidate.tag == tag:
            return candidate
    raise KeyError(f"no Triton release {tag!r} in genserve.gpu_stack.RELEASES")


SUPPORTED = release()


def serving_runtime() -> dict[str, object]:
    """What serves an export's graphs on the GPU: the supported release's Triton and the ONNX Runtime of
    its onnxruntime backend (not the one pip installs here). Part of the export's stage keys: the graphs
    are rewritten for it (genserve.export.graph_fixes), and a fused graph must load in it."""
    return {
        "triton_release": SUPPORTED.tag,
        "onnxruntime": SUPPORTED.onnxruntime,
        "highest_opset": SUPPORTED.highest_opset,
    }


@dataclass(frozen=True)
class Gpu:
    """A data-centre GPU the stack is sized for: the device memory a process gets (what CUDA reports as
    total, about 2% under the marketed size)."""

    name: str
    memory_gib: float
    compute_capability: str


GPUS: tuple[Gpu, ...] = (
    Gpu("H100 80GB", 78.0, "9.0"),
    Gpu("H200 141GB", 139.0, "9.0"),
)
# What `genserve export` bounds TensorRT profiles and workspaces by unless told (--gpu-memory-gb): the
# smaller of the two, as docs/diffusion-serving.md sizes each family for one 80 GB GPU.
TARGET_GPU = GPUS[0]


def markdown_table() -> str:
    """The table docs/export.md shows (kept equal to it by a test)."""
    lines = [
        "| NGC Triton | Triton | Python | CUDA | ONNX Runtime (backend) | highest opset | bf16 I/O | TensorRT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in RELEASES:
        mark = " **(supported)**" if r.tag == SUPPORTED_TAG else ""
        tensorrt = "the image's own" if r.tensorrt == "image" else r.tensorrt
        lines.append(
            f"| {r.tag}{mark} | {r.triton} | {r.python} | {r.cuda} | {r.onnxruntime} | {r.highest_opset} | "
            f"{'yes' if r.bf16_io else 'no'} | {tensorrt} |"
        )
    return "\n".join(lines)


# --- how long a GPU replica takes to become ready (the gpu overlay's startup probe) -------------------


@dataclass(frozen=True)
class StartupBasis:
    """A computed load time: no GPU was available to measure one (docs/scale-out.md, "Startup")."""

    weight_gb: float = 34.0  # FLUX.1 Kontext or CogView4 in bf16 (docs/diffusion-serving.md, "GPU sizing")
    read_gb_per_s: float = 0.25  # a network volume's sustained read (cloud block storage baselines: 0.125-1 GB/s)
    copies: int = 2  # gpu-s3: the bucket is copied to local disk, then read; a volume is read once
    session_s: float = 60.0  # ONNX Runtime's graph optimization and CUDA upload of six leaves, TensorRT deserialization
    warmups: int = 6  # t2i, tie, vttie and their streaming variants (build-repo's model_warmup)
    warmup_s: float = 20.0  # 2 steps at 1024 px on a data-centre GPU, the first call's cuDNN/arena set-up included
    margin: float = 1.5  # slower disks, a busy node

    def seconds(self) -> float:
        loading = self.weight_gb / self.read_gb_per_s * self.copies
        return (loading + self.session_s + self.warmups * self.warmup_s) * self.margin


STARTUP = StartupBasis()
