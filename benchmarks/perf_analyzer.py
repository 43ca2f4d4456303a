"""perf_analyzer's input data for every served task model, and the commands that use it.

``genserve bench --perf-analyzer-data DIR`` writes, for each model whose tensors are a task's contract
(:mod:`genserve.protocol`: ``face_swap``, ``ocr`` and the other OCR model, the diffusion pipeline models
and their streaming variants), ``DIR/<model>.json`` in perf_analyzer's input-data format: real requests
(photos, rendered signs, prompts, parameters) encoded by the contract as the client encodes them, one
``data`` entry per request, each tensor as ``{"content": ..., "shape": [...]}``. BYTES tensors are
base64 of Triton's serialization (each element a 4-byte little-endian length, then its bytes), as
perf_analyzer reads them; numbers are listed. ``DIR/perf_analyzer.sh`` runs ``perf_analyzer`` on each
(``--streaming`` for the decoupled models) and ``model-analyzer profile`` on them all, from the NGC SDK
container (``nvcr.io/nvidia/tritonserver:<yy.mm>-py3-sdk``) against a running server.

Leaf models (ONNX graphs) and the OCR ensemble's steps have no contract: perf_analyzer's own random
data with ``--shape`` fits them (the script says how).

On a plain host (no SDK container) the binary is the one the ``tritonclient==2.51.0`` manylinux wheel carries
(``tritonclient-2.51.0.data/data/bin/perf_analyzer``; later wheels have none): ``scripts/setup.sh`` puts it
in ``.venv/perf_analyzer/`` with the ``libcudart.so.12`` it links (from the ``nvidia-cuda-runtime-cu12``
wheel; no GPU is needed to load it) and installs Debian's ``libb64-0d``. :func:`find_binary` and
:func:`run` use it (``tests/test_perf_analyzer.py``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from genserve.protocol import CONTRACTS
from genserve.schema import BYTES, Contract
from genserve.triton.model_config import ModelConfig, contract_mismatches
from genserve.triton.served_config import served_config

SCRIPT = "perf_analyzer.sh"
MODEL_ANALYZER_CONFIG = "model-analyzer.yaml"


def contract_of(config: ModelConfig) -> Contract | None:
    """The task contract whose tensors a model's config declares, or None (a leaf model, a step). Where
    several declare the same tensors (edit_image and edit_text differ only in an OPTIONS key), the one
    the model is named after (``genserve build-repo`` names models ``<prefix><contract model>``)."""
    matching = [contract for contract in CONTRACTS.values() if not contract_mismatches(config, contract)]
    if len(matching) > 1:
        matching = [contract for contract in matching if config.name.endswith(contract.model)]
    return matching[0] if len(matching) == 1 else None


def repository_configs(repositories: Iterable[Path]) -> dict[str, ModelConfig]:
    """Every model config of the given repository folders, by model name."""
    return {
        path.parent.name: served_config(path.parent)
        for repository in repositories
        for path in sorted(Path(repository).glob("*/config.pbtxt"))
    }


def server_configs(grpc_url: str) -> dict[str, ModelConfig]:
    """Every loaded model's config on a running server (gRPC), by model name. The statistics name them:
    the repository index, which would too, needs the admin key (:mod:`genserve.admin`)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        names = sorted({stats.name for stats in client.get_inference_statistics().model_stats})
        return {name: client.get_model_config(name).config for name in names}
    finally:
        client.close()


# --- real requests per contract ------------------------------------------------------------------------


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_requests(
    contract: Contract, *, size: int = 64, steps: int = 3, faces_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Real request values for a contract: the benchmarks' photos, signs, prompts and parameters."""
    from genserve.benchmarks.serving import EDITS, PROMPTS, TEXT_EDITS, FaceSwapTask

    task = contract.model.removesuffix("_stream")
    if task == "face_swap":
        return [
            {"ori_image": ori, "target_image": target, "candidates": 1}
            for ori, target in FaceSwapTask._pairs(faces_dir)
        ]
    if task == "ocr":
        from genserve.benchmarks.ocr import sample_images

        return [{"image": image} for image in sample_images()]
    common = {"steps": steps, "width": size, "height": size}
    if task == "text_to_image":
        return [{"prompt": prompt, "seed": seed, **common} for seed, prompt in enumerate(PROMPTS)]
    from PIL import Image

    from genserve.demo.samples import sign_image

    if task == "edit_image":
        y, x = np.mgrid[0:size, 0:size]
        image = _png(
            Image.fromarray(
                np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1).astype(np.uint8)
            )
        )
        return [{"prompt": prompt, "image": image, "seed": seed, **common} for seed, prompt in enumerate(EDITS)]
    if task == "edit_text":
        image = _png(sign_image(size=size))
        return [{"prompt": prompt, "image": image, "seed": seed, **common} for seed, prompt in enumerate(TEXT_EDITS)]
    raise ValueError(f"no sample requests for {contract.model}")


# --- perf_analyzer's input-data format -----------------------------------------------------------------


def tensor_entry(array: np.ndarray) -> dict[str, Any]:
    """One tensor as perf_analyzer's input data: ``content`` (a list, or base64 of Triton's BYTES
    serialization) and ``shape``."""
    shape = list(array.shape)
    if array.dtype == np.object_:
        from tritonclient.utils import serialize_byte_tensor

        serialized = serialize_byte_tensor(array).item()
        return {"content": {"b64": base64.b64encode(serialized).decode("ascii")}, "shape": shape}
    return {"content": array.reshape(-1).tolist(), "shape": shape}


def input_data(contract: Contract, requests: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """perf_analyzer's input-data document: one ``data`` entry per request, its tensors as the contract
    encodes them."""
    return {
        "data": [
            {name: tensor_entry(array) for name, array in contract.encode_request(**request).items()}
            for request in requests
        ]
    }


def read_input_data(document: Mapping[str, Any], config: ModelConfig) -> list[dict[str, np.ndarray]]:
    """The requests an input-data document describes, as numpy arrays typed by the model's config (what
    perf_analyzer sends). Raises ValueError where the document breaks the format."""
    from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

    from genserve.triton.model_config import declared_tensors

    dtypes = {tensor.name: tensor.dtype for tensor in declared_tensors(config, "input")}
    entries = document.get("data")
    if not isinstance(entries, list) or not entries:
        raise ValueError("'data' must be a non-empty list")
    requests = []
    for index, entry in enumerate(entries):
        request = {}
        for name, tensor in entry.items():
            where = f"data[{index}].{name}"
            if name not in dtypes:
                raise ValueError(f"{where}: the model has no input {name!r}")
            if set(tensor) != {"content", "shape"} or not all(isinstance(d, int) and d >= 0 for d in tensor["shape"]):
                raise ValueError(f"{where}: expected {{'content', 'shape'}} with a list of sizes, got {tensor!r:.200}")
            count = int(np.prod(tensor["shape"]))
            if dtypes[name] == BYTES:
                content = tensor["content"]
                if not isinstance(content, dict) or set(content) != {"b64"}:
                    raise ValueError(f"{where}: BYTES content must be {{'b64': ...}}")
                array = deserialize_bytes_tensor(base64.b64decode(content["b64"], validate=True))
            else:
                array = np.asarray(tensor["content"], dtype=triton_to_np_dtype(_triton_name(dtypes[name])))
            if array.size != count:
                raise ValueError(f"{where}: {array.size} elements for shape {tensor['shape']}")
            request[name] = array.reshape(tensor["shape"])
        requests.append(request)
    return requests


def _triton_name(dtype: str) -> str:
    from genserve.schema import TRITON_TYPES

    return TRITON_TYPES[dtype].removeprefix("TYPE_").replace("STRING", "BYTES")


# --- the files ------------------------------------------------------------------------------------------


def write_perf_analyzer_data(
    out_dir: Path, configs: Mapping[str, ModelConfig], **sample_options: Any
) -> dict[str, Path]:
    """``out_dir/<model>.json`` for every model of ``configs`` that serves a contract, and the script;
    returns model name -> file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, streaming, others = {}, set(), []
    for name, config in sorted(configs.items()):
        contract = contract_of(config)
        if contract is None:
            others.append(name)
            continue
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(input_data(contract, sample_requests(contract, **sample_options))) + "\n")
        written[name] = path
        if contract.streaming:
            streaming.add(name)
    (out_dir / SCRIPT).write_text(_script(written, streaming, others))
    (out_dir / SCRIPT).chmod(0o755)
    (out_dir / MODEL_ANALYZER_CONFIG).write_text(_model_analyzer_config(written, streaming))
    return written


def _script(written: Mapping[str, Path], streaming: set[str], others: list[str]) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# perf_analyzer and Model Analyzer on the genserve models, with real requests (written by",
        "# `genserve bench --perf-analyzer-data`). Run it in the NGC SDK container beside a running server:",
        '#   docker run --rm -it --net host -v "$PWD":/data -w /data '
        "nvcr.io/nvidia/tritonserver:<yy.mm>-py3-sdk ./perf_analyzer.sh",
        "# TRITON_GRPC (default localhost:8001) is the server; CONCURRENCY (default 1:4) the client concurrency range.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'URL="${TRITON_GRPC:-localhost:8001}"',
        'CONCURRENCY="${CONCURRENCY:-1:4}"',
        "",
    ]
    for name in written:
        stream = " --streaming" if name in streaming else ""  # decoupled: answered over a gRPC stream
        lines.append(
            f'perf_analyzer -m {shlex.quote(name)} -i grpc -u "$URL"{stream} '
            f"--input-data {shlex.quote(name + '.json')} "
            f'--concurrency-range "$CONCURRENCY" --measurement-mode count_windows --measurement-request-count 20 '
            f"-f {shlex.quote(name + '.csv')}"
        )
    lines += [
        "",
        "# Model Analyzer over the same data against the running server (remote mode: configs are not changed):",
        f'model-analyzer profile -f {MODEL_ANALYZER_CONFIG} --triton-grpc-endpoint "$URL"',
    ]
    if others:
        lines += [
            "",
            "# Models without a task contract (ONNX leaves, ensemble steps, the pipeline host that the pipeline",
            "# models call) take perf_analyzer's random data; give their variable dimensions, e.g.:",
            '# perf_analyzer -m ocr_det -i grpc -u "$URL" --shape x:3,736,1440',
            "# " + ", ".join(others),
        ]
    return "\n".join(lines) + "\n"


def _model_analyzer_config(written: Mapping[str, Path], streaming: set[str]) -> str:
    lines = [
        "# model-analyzer profile -f model-analyzer.yaml (written by genserve bench --perf-analyzer-data). The",
        "# streaming (decoupled) variants are left to perf_analyzer --streaming: their plain models are here.",
        "triton_launch_mode: remote",
        "client_protocol: grpc",
        "model_repository: /models  # required by the tool; remote mode changes no config",
        "profile_models:",
    ]
    for name, path in written.items():
        if name not in streaming:
            lines += [f"  {name}:", "    perf_analyzer_flags:", f"      input-data: {path.name}"]
    return "\n".join(lines) + "\n"


# --- the binary -----------------------------------------------------------------------------------------

BINARY_ENV = "GENSERVE_PERF_ANALYZER"  # the binary's path, where it is not in the places below


def find_binary() -> Path | None:
    """perf_analyzer: ``$GENSERVE_PERF_ANALYZER``, the one scripts/setup.sh unpacked into this environment
    (``<venv>/perf_analyzer/perf_analyzer``), or one on ``PATH``; None when there is none."""
    candidates = [os.environ.get(BINARY_ENV), Path(sys.prefix) / "perf_analyzer" / "perf_analyzer"]
    candidates.append(shutil.which("perf_analyzer"))
    return next((Path(c) for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


def binary_environment(binary: Path) -> dict[str, str]:
    """The environment it runs in: its folder (``libcudart.so.12`` beside it) first on ``LD_LIBRARY_PATH``."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(binary.parent), env.get("LD_LIBRARY_PATH")]))
    return env


def binary_problem(binary: Path | None) -> str | None:
    """Why perf_analyzer cannot run here (missing, or a library it links is absent), or None when it runs."""
    if binary is None:
        return f"no perf_analyzer binary (scripts/setup.sh installs it; or set {BINARY_ENV})"
    try:
        probe = subprocess.run(
            [binary, "--version"], env=binary_environment(binary), capture_output=True, text=True, timeout=60
        )
    except OSError as error:
        return f"{binary} does not start: {error}"
    if probe.returncode != 0 or "Perf Analyzer" not in probe.stdout + probe.stderr:
        return f"{binary} does not start: {(probe.stderr or probe.stdout).strip()[:300]}"
    return None


def run(
    binary: Path,
    model: str,
    grpc_url: str,
    data: Path,
    *,
    streaming: bool = False,
    requests: int = 4,
    csv_path: Path | None = None,
    timeout_s: float = 600,
) -> subprocess.CompletedProcess:
    """One measurement of ``model`` at concurrency 1 over gRPC: ``requests`` requests of the input data in
    ``data`` (``--streaming`` for a decoupled model); perf_analyzer's output and exit code."""
    command = [
        str(binary),
        "-m",
        model,
        "-i",
        "grpc",
        "-u",
        grpc_url,
        "--input-data",
        str(data),
        "--concurrency-range",
        "1",
        "--request-count",
        str(requests),
    ]
    if streaming:
        command.append("--streaming")
    if csv_path is not None:
        command += ["-f", str(csv_path)]
    return subprocess.run(command, env=binary_environment(binary), capture_output=True, text=True, timeout=timeout_s)
