"""Per-component latency, torch eager vs ONNX Runtime, of exported demo pipelines.

    python -m genserve.benchmarks.export_latency [--sizes tiny,medium] [--families sd,flux,cogview4]
                                                 [--json results.json] [--work DIR]

For each family and size it builds the random-weight demo pipeline, exports it (fp32, with ONNX
Runtime's fusions), then times every component on the same inputs in torch (eager, no grad) and in
ONNX Runtime (the exported graph as served), and prints them side by side with the speedup. The
export's own numbers come along: ORT latency of the plain vs fused graph, export time, peak memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from genserve.demo.pipelines import DEFAULT_DEMO_FOR_FAMILY


@dataclass
class Row:
    family: str
    size: str
    component: str
    shape: str
    torch_ms: float
    ort_ms: float
    ort_plain_ms: float | None
    fusions: int

    @property
    def speedup(self) -> float:
        return self.torch_ms / self.ort_ms


def _bench_shape(family, configs, size: str):
    from genserve.families import ShapeRequest

    multiple = family.pixel_multiple(configs)
    # Tiny: a few latent patches. Medium: 256x256 images, CLIP-length prompts.
    pixels = 8 * multiple if size == "tiny" else max(256 // multiple, 1) * multiple
    return ShapeRequest(batch=1, height=pixels, width=pixels, text_len=77, with_image="vttie" in family.tasks)


def benchmark_family(family_name: str, size: str, work: Path, runs: int = 5) -> tuple[list[Row], dict]:
    import torch

    from genserve import torch_sessions
    from genserve.demo.pipelines import build_demo_pipeline
    from genserve.export.components import ComponentModule, load_module, random_inputs
    from genserve.export.pipeline import ExportOptions, export_pipeline
    from genserve.families import FAMILIES, read_configs, read_model_index

    family = FAMILIES[family_name]
    pipeline_dir = build_demo_pipeline(DEFAULT_DEMO_FOR_FAMILY[family_name], work / size, size=size)
    out_dir = work / size / f"{family_name}-onnx"
    report = export_pipeline(pipeline_dir, out_dir, ExportOptions(force=True, progress=False), log=lambda _: None)
    configs, model_index = read_configs(pipeline_dir, family), read_model_index(pipeline_dir)
    request = _bench_shape(family, configs, size)
    dims = family.dims(request, configs)
    rows = []
    for component in report.components:
        spec = family.component(component.name)
        config = configs[spec.module]
        module = load_module(pipeline_dir, spec.module, model_index, torch.float32)
        wrapper = ComponentModule(module, spec, config)
        inputs = random_inputs(spec, config, dims, torch.float32, seed=0)
        with torch.no_grad():
            torch_s = torch_sessions.latency(lambda w=wrapper, x=inputs: w(*x), runs=runs)
        del wrapper, module
        session = torch_sessions.open_session(out_dir / component.path)
        names = [t.name for t in spec.active_inputs(config)]
        ort_s = torch_sessions.latency(lambda s=session, n=names, x=inputs: torch_sessions.run(s, n, x), runs=runs)
        resolved = spec.resolve(dims, config)
        first = spec.active_inputs(config)[0]
        rows.append(
            Row(
                family_name,
                size,
                component.name,
                f"{first.name}{list(spec.shape(first, resolved))}",
                torch_s * 1e3,
                ort_s * 1e3,
                component.latency_plain_s * 1e3 if component.latency_plain_s else None,
                sum(component.fusions.values()) if component.fused else 0,
            )
        )
    export_facts = {
        "family": family_name,
        "size": size,
        "export_s": round(report.seconds, 1),
        "peak_host_memory_mib": round(report.peak_memory_bytes / 2**20),
        "largest_module_mib": round(report.largest_module_bytes / 2**20, 1),
        "weights_mib": round(sum(c.weight_bytes for c in report.components) / 2**20, 1),
        "worst_parity": max(r.worst for r in report.parity_results),
    }
    return rows, export_facts


def format_rows(rows: list[Row]) -> str:
    lines = [
        f"{'family':<9} {'size':<7} {'component':<15} {'first input shape':<40} "
        f"{'torch ms':>9} {'ORT ms':>9} {'speedup':>8}"
    ]
    for r in rows:
        lines.append(
            f"{r.family:<9} {r.size:<7} {r.component:<15} {r.shape:<40} "
            f"{r.torch_ms:>9.2f} {r.ort_ms:>9.2f} {r.speedup:>7.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genserve.benchmarks.export_latency", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", default="tiny,medium")
    parser.add_argument("--families", default=",".join(DEFAULT_DEMO_FOR_FAMILY))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    parser.add_argument("--work", help="folder for the pipelines and exports (default: a temporary one)")
    args = parser.parse_args(argv)
    for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    import torch

    rows: list[Row] = []
    exports: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for size in args.sizes.split(","):
            for family in args.families.split(","):
                started = time.perf_counter()
                family_rows, facts = benchmark_family(family, size, work, runs=args.runs)
                rows += family_rows
                exports.append(facts)
                print(f"{family} {size}: exported and timed in {time.perf_counter() - started:.0f} s", flush=True)
    print()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch 1, fp32, ONNX Runtime with fusions")
    print(format_rows(rows))
    print()
    print(f"{'family':<9} {'size':<7} {'export s':>9} {'weights MiB':>12} {'peak RSS MiB':>13} {'worst rel. L2':>14}")
    for e in exports:
        print(
            f"{e['family']:<9} {e['size']:<7} {e['export_s']:>9} {e['weights_mib']:>12} "
            f"{e['peak_host_memory_mib']:>13} {e['worst_parity']:>14.2e}"
        )
    if args.json_path:
        payload = {"rows": [asdict(r) | {"speedup": r.speedup} for r in rows], "exports": exports}
        Path(args.json_path).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
