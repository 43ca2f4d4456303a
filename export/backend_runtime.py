"""The container's ONNX Runtime on this host: open graphs as the GPU target's onnxruntime backend will.

The native leaves of ``genserve build-repo --target gpu`` are loaded by the ONNX Runtime built into the
supported container's onnxruntime backend (:data:`genserve.gpu_stack.SUPPORTED`: 1.24.4 in NGC 26.06),
not by the newer one pip installs here (1.31.1), and a graph the newer one opens may not open in the
older: FLUX's float64 rotary embedding did not ("Could not find an implementation for Cos(7)"). The
PyPI wheel of the backend's version (CPU) installs beside this environment, without its dependencies,
into a folder of its own, and a child process with that folder first on its path opens every graph on
the CPU provider with the backend's default graph optimizations (all): what its kernels cannot load, or
its type checks refuse, fails here as it would there. CUDA kernels are not checked this way (no GPU):
:mod:`genserve.export.cuda_kernels` holds bf16 graphs to ONNX Runtime's documented CUDA kernels.

    python -m genserve.export.backend_runtime EXPORT_OR_REPOSITORY_OR_ONNX... [--site DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from genserve import gpu_stack
from genserve.config import CACHE_DIR

PACKAGE = "onnxruntime"  # the CPU wheel: the same ONNX Runtime version, its CPU kernels and type checks


def backend_version() -> str:
    """The ONNX Runtime of the supported container's onnxruntime backend (the stack table's)."""
    return gpu_stack.SUPPORTED.onnxruntime


def default_site(version: str | None = None) -> Path:
    return CACHE_DIR / f"onnxruntime-{version or backend_version()}"


def installed_version(site: Path) -> str | None:
    """The onnxruntime version installed in ``site`` (its dist-info), or None."""
    found = sorted(Path(site).glob(f"{PACKAGE}-*.dist-info"))
    return found[0].name.removeprefix(f"{PACKAGE}-").removesuffix(".dist-info") if found else None


def install(site: Path | None = None, version: str | None = None) -> Path:
    """The backend's ONNX Runtime in ``site`` (a folder of its own; pip's ``--target``, no dependencies:
    this environment's numpy serves it). Nothing is done when it is there already. Raises RuntimeError
    with pip's own words when pip cannot install it."""
    version = version or backend_version()
    site = Path(site or default_site(version))
    if installed_version(site) == version:
        return site
    partial = site.with_name(f".{site.name}.partial-{os.getpid()}")
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--quiet",
        "--no-deps",
        "--target",
        str(partial),
        f"{PACKAGE}=={version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip could not install {PACKAGE}=={version}: {(result.stderr or result.stdout).strip()}")
    site.parent.mkdir(parents=True, exist_ok=True)
    if site.exists():  # another process installed it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.rename(site)
    return site


def served_graphs(path: Path) -> list[Path]:
    """The ONNX files ``path`` stands for: itself (a ``.onnx`` file), an export's served graphs (its
    manifest), or a repository's native ONNX Runtime leaves (``platform: "onnxruntime_onnx"``)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / "manifest.json").is_file():
        from genserve.manifest import Manifest

        manifest = Manifest.read(path)
        return [path / entry.path for entry in manifest.components.values()]
    from genserve.triton.model_config import read_config

    graphs = []
    for config_file in sorted(path.glob("*/config.pbtxt")):
        config = read_config(config_file)
        if config.platform == "onnxruntime_onnx":
            graphs.append(config_file.parent / "1" / (config.default_model_filename or "model.onnx"))
    return graphs


def open_graphs(graphs: list[Path], site: Path, version: str | None = None) -> dict[str, str | None]:
    """Graph -> None (it opened) or ONNX Runtime's error, each opened in a child process that imports
    the ONNX Runtime installed in ``site``; raises RuntimeError when that child's ONNX Runtime is not
    ``version`` (the backend's)."""
    version = version or backend_version()
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "genserve.export.backend_runtime", "--open-here", *map(str, graphs)]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=1800, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the check of {len(graphs)} graphs failed: {result.stderr.strip()[-2000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if report["onnxruntime"] != version:
        raise RuntimeError(f"{site} gave ONNX Runtime {report['onnxruntime']}, not the backend's {version}")
    return report["graphs"]


def _open_here(graphs: list[str]) -> dict[str, object]:
    """In the child: open each graph with the ONNX Runtime on this path (CPU provider, all optimizations,
    as the onnxruntime backend's default level)."""
    import onnxruntime as ort

    results: dict[str, str | None] = {}
    for graph in graphs:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            results[graph] = None
        except Exception as error:  # noqa: BLE001 - the error is the result
            results[graph] = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return {"onnxruntime": ort.__version__, "graphs": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genserve.export.backend_runtime", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("paths", nargs="+", type=Path, help="exports, repositories or .onnx files")
    parser.add_argument("--site", type=Path, help=f"where the backend's ONNX Runtime goes (default {default_site()})")
    parser.add_argument("--open-here", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.open_here:
        print(json.dumps(_open_here([str(p) for p in args.paths])))
        return 0
    graphs = [graph for path in args.paths for graph in served_graphs(path)]
    if not graphs:
        print("no ONNX graphs found in " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 2
    site = install(args.site)
    results = open_graphs(graphs, site)
    for graph, error in results.items():
        print(f"{'ok  ' if error is None else 'FAIL'} {graph}{'' if error is None else ': ' + error}")
    failed = sum(error is not None for error in results.values())
    opened = len(results) - failed
    print(f"ONNX Runtime {backend_version()} (NGC {gpu_stack.SUPPORTED.tag}'s): {opened} of {len(results)} graphs open")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
