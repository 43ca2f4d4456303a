"""Reporting shared by the benchmarks: Triton's per-model statistics, Markdown tables and PNG plots.

* :func:`model_stats` / :func:`stats_delta`: Triton's statistics extension (cumulative counters) read
  over gRPC before and after a load level; the difference gives, per model, the requests answered, the
  executions run and the mean queue and compute time per request during that level.
* :func:`markdown_report`: the runs, the served/in-process ratios and the per-model breakdown as Markdown.
* :func:`memory_tables`: the server's memory by model (PSS and RSS), idle and after the run.
* :func:`write_plots`: per task, throughput and latency against concurrency (served and in-process), and
  the per-model queue/compute breakdown; matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COMPUTE_PARTS = ("compute_input", "compute_infer", "compute_output")


def model_stats(grpc_url: str) -> dict[str, dict[str, int]]:
    """Cumulative counters per model name (all versions summed): requests, executions and nanoseconds."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        stats = client.get_inference_statistics(as_json=True).get("model_stats", [])
    finally:
        client.close()
    totals: dict[str, dict[str, int]] = {}
    for entry in stats:
        inference = entry.get("inference_stats", {})
        # Protobuf's JSON leaves out zero fields and writes 64-bit counters as strings.
        part = lambda key, field, stats=inference: int(stats.get(key, {}).get(field, 0))  # noqa: E731
        counters = {
            "requests": part("success", "count"),
            "failures": part("fail", "count"),
            "executions": int(entry.get("execution_count", 0)),
            "queue_ns": part("queue", "ns"),
            "compute_ns": sum(part(key, "ns") for key in COMPUTE_PARTS),
        }
        total = totals.setdefault(entry["name"], dict.fromkeys(counters, 0))
        for key, value in counters.items():
            total[key] += value
    return totals


def stats_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per model that answered requests between the two snapshots: requests, executions, requests merged
    per execution, and mean queue and compute milliseconds per request."""
    breakdown = {}
    for name, now in sorted(after.items()):
        then = before.get(name, dict.fromkeys(now, 0))
        requests = now["requests"] - then["requests"]
        if requests <= 0:
            continue
        executions = now["executions"] - then["executions"]
        breakdown[name] = {
            "requests": requests,
            "executions": executions,
            "requests_per_execution": round(requests / executions, 2) if executions else None,
            "queue_ms": round((now["queue_ns"] - then["queue_ns"]) / requests / 1e6, 3),
            "compute_ms": round((now["compute_ns"] - then["compute_ns"]) / requests / 1e6, 3),
        }
    return breakdown


# --- Markdown -----------------------------------------------------------------------------------------


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(title: str, intro: str, columns: list[tuple[str, str]], rows: list[list[Any]]) -> list[str]:
    """A Markdown section: its title, an optional sentence, and a table of ``columns`` (header, alignment
    "---" or "---:") over ``rows`` (cells already formatted)."""
    lines = ["", f"## {title}", ""] + ([intro, ""] if intro else [])
    lines.append("| " + " | ".join(header for header, _ in columns) + " |")
    lines.append("|" + "|".join(align for _, align in columns) + "|")
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def markdown_report(report: dict[str, Any]) -> str:
    """``report`` as written to bench.json: its runs, ratios and per-model breakdown as Markdown tables."""
    host = report.get("host", {})
    lines = [
        "# genserve bench",
        "",
        f"Host: {host.get('cpus')} CPU cores, {host.get('machine')}, GPU: {host.get('gpu') or 'none'}; "
        f"load average {host.get('loadavg_start')} at start, {host.get('loadavg_end')} at end. "
        f"Server: {report.get('server', {}).get('url', '?')} ({report.get('server', {}).get('started_by', '?')}).",
        "",
        "## Throughput and latency",
        "",
        "| task | model | mode | concurrency | requests | errors | images/s | p50 ms | p90 ms | p99 ms | "
        "served / in-process |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = {(r["task"], r["concurrency"]): r for r in report.get("ratios", [])}
    for run in report.get("runs", []):
        latency = run["latency_ms"]
        ratio = ratios.get((run["task"], run["concurrency"])) if run["mode"] == "served" else None
        lines.append(
            f"| {run['task']} | {run.get('model', '')} | {run['mode']} | {run['concurrency']} | {run['requests']} | "
            f"{run['errors']} | {run['images_per_s']:.3f} | {_fmt(latency['p50'], 0)} | {_fmt(latency['p90'], 0)} | "
            f"{_fmt(latency['p99'], 0)} | {_fmt(ratio and ratio['throughput_ratio'], 2) + 'x' if ratio else ''} |"
        )
    num, text = "---:", "---"
    if ratios:
        lines += _table(
            "Served / in-process",
            "Throughput ratio > 1: the server is faster; p50 latency ratio > 1: a served request takes longer.",
            [
                ("task", text),
                ("concurrency", num),
                ("served images/s", num),
                ("in-process images/s", num),
                ("throughput ratio", num),
                ("p50 latency ratio", num),
            ],
            [
                [
                    r["task"],
                    r["concurrency"],
                    f"{r['served_images_per_s']:.3f}",
                    f"{r['in_process_images_per_s']:.3f}",
                    _fmt(r["throughput_ratio"], 2) + "x",
                    _fmt(r["p50_latency_ratio"], 2) + "x",
                ]
                for r in report["ratios"]
            ],
        )
    if report.get("floor_ratios"):
        lines += _table(
            "Served / floor",
            "The floor: the same export's graphs in ONNX Runtime in this process, one request at a time "
            "(no Triton, no BLS).",
            [
                ("task", text),
                ("concurrency", num),
                ("served images/s", num),
                ("floor images/s", num),
                ("served / floor", num),
            ],
            [
                [
                    r["task"],
                    r["concurrency"],
                    f"{r['served_images_per_s']:.3f}",
                    f"{r['floor_images_per_s']:.3f}",
                    _fmt(r["served_over_floor"], 2) + "x",
                ]
                for r in report["floor_ratios"]
            ],
        )
    if report.get("first_requests"):
        lines += _table(
            "First request after the server's start",
            "",
            [
                ("task", text),
                ("pipeline models warmed up at load", text),
                ("first request ms", num),
                ("steady p50 ms", num),
                ("first / p50", num),
            ],
            [
                [
                    task,
                    "yes" if first["model_warmup"] else "no",
                    f"{first['first_ms']:.0f}",
                    _fmt(first.get("steady_p50_ms"), 0),
                    _fmt(first.get("first_over_p50"), 2) + "x",
                ]
                for task, first in report["first_requests"].items()
            ],
        )
    breakdown_rows = [
        (run, name, stats)
        for run in report.get("runs", [])
        if run["mode"].startswith("served")
        for name, stats in run.get("models", {}).items()
    ]
    if breakdown_rows:
        lines += _table(
            "Per-model breakdown (Triton statistics, served runs)",
            "Per request of each model during the level: mean time queued before an execution, and mean compute "
            "time (input + infer + output). Plain pipeline models (BLS) include the time they wait for their leaves; a "
            "streaming model's compute is only the hand-over to its worker, so its own time per request (request ms, "
            "from the responses) and the queue's share of it are given beside. BLS overhead: the pipeline's wait per "
            "denoiser call beyond the denoiser's compute (concurrency 1).",
            [("task", text), ("concurrency", num), ("model", text)]
            + [
                (header, num)
                for header in (
                    "requests",
                    "executions",
                    "requests / execution",
                    "queue ms",
                    "compute ms",
                    "request ms",
                    "queue share",
                    "BLS overhead ms/step",
                )
            ],
            [
                [
                    run["task"],
                    run["concurrency"],
                    name,
                    s.get("requests", 0),
                    s.get("executions", 0),
                    _fmt(s.get("requests_per_execution"), 2),
                    f"{s.get('queue_ms', 0):.2f}",
                    f"{s.get('compute_ms', 0):.2f}",
                    _fmt(s.get("request_ms"), 1),
                    _percent(s.get("queue_share")),
                    _fmt(s.get("bls_overhead_ms_per_step"), 2) + _bracketed(_percent(s.get("bls_overhead_share"))),
                ]
                for run, name, s in breakdown_rows
            ],
        )
    if report.get("stream_vs_plain"):
        lines += _table(
            "Streaming model beside the plain one",
            "The same requests to the streaming model (progress per step) and unary to the plain model, their "
            "rounds interleaved; the denoiser's requests per execution under each (requests merged by its batcher), "
            "and its requests computed at once (every request's compute time over the wall time: the overlap, "
            "whatever its instances).",
            [
                ("task", text),
                ("concurrency", num),
                ("requests", num),
                ("stream images/s", num),
                ("plain images/s", num),
                ("stream / plain", num),
                ("stream p50 ms", num),
                ("plain p50 ms", num),
                ("denoiser requests / execution, stream", num),
                ("denoiser requests / execution, plain", num),
                ("denoiser requests at once, stream", num),
                ("denoiser requests at once, plain", num),
                ("server CPU ms / image, stream", num),
                ("server CPU ms / image, plain", num),
            ],
            [
                [
                    e["task"],
                    e["concurrency"],
                    e["requests"],
                    f"{e['stream_images_per_s']:.2f}",
                    f"{e['plain_images_per_s']:.2f}",
                    _fmt(e["stream_over_plain"], 2) + "x",
                    _fmt(e["stream_p50_ms"], 0),
                    _fmt(e["plain_p50_ms"], 0),
                    _fmt(e["denoiser_requests_per_execution_stream"], 2),
                    _fmt(e["denoiser_requests_per_execution_plain"], 2),
                    _fmt(e.get("denoiser_requests_at_once_stream"), 2),
                    _fmt(e.get("denoiser_requests_at_once_plain"), 2),
                    _fmt(e.get("server_cpu_ms_per_image_stream"), 0),
                    _fmt(e.get("server_cpu_ms_per_image_plain"), 0),
                ]
                for e in report["stream_vs_plain"]
            ],
        )
    lines += memory_tables(report.get("memory", []))
    return "\n".join(lines) + "\n"


def memory_tables(snapshots: list[dict[str, Any]]) -> list[str]:
    """The server's memory (``genserve.memory.MemoryReport.summary()`` of each snapshot: idle, after the
    run) as one Markdown table: per model (and tritonserver, the front) PSS and RSS in MiB, a column pair
    per snapshot, the totals last."""
    if not snapshots:
        return []
    mib = 2**20
    models = list(dict.fromkeys(name for snapshot in snapshots for name in snapshot["models"]))
    columns = [("model", "---"), ("processes", "---:")]
    for snapshot in snapshots:
        columns += [(f"PSS MiB, {snapshot['label']}", "---:"), (f"RSS MiB, {snapshot['label']}", "---:")]
    rows = []
    for name in models:
        row: list[Any] = [name, max(s["models"].get(name, {}).get("processes", 0) for s in snapshots)]
        for snapshot in snapshots:
            entry = snapshot["models"].get(name)
            row += [f"{entry['pss'] / mib:.1f}", f"{entry['rss'] / mib:.1f}"] if entry else ["-", "-"]
        rows.append(row)
    total: list[Any] = ["**total**", max(s["processes"] for s in snapshots)]
    for snapshot in snapshots:
        total += [f"**{snapshot['pss'] / mib:.0f}**", f"**{snapshot['rss'] / mib:.0f}**"]
    rows.append(total)
    intro = (
        "PSS: each shared page split between the processes that map it (the sum is what the server costs the "
        "host); RSS counts shared pages in every process. genserve.memory reads them from the kernel."
    )
    return _table("Server memory by model", intro, columns, rows)


def _percent(share: float | None) -> str:
    return "" if share is None else f"{100 * share:.2f} %"


def _bracketed(text: str) -> str:
    return f" ({text})" if text else ""


# --- PNG plots ----------------------------------------------------------------------------------------


def write_plots(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``out_dir/<task>.png`` (throughput and latency against concurrency, served and in-process) and
    ``out_dir/<task>_models.png`` (queue and compute ms per request of each served model, per level)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    tasks = list(dict.fromkeys(run["task"] for run in report.get("runs", [])))
    for task in tasks:
        runs = [run for run in report["runs"] if run["task"] == task]
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for mode, style in (("served", "o-"), ("in-process", "s--")):
            mine = sorted((run for run in runs if run["mode"] == mode), key=lambda run: run["concurrency"])
            if not mine:
                continue
            levels = [run["concurrency"] for run in mine]
            left.plot(levels, [run["images_per_s"] for run in mine], style, label=mode)
            for q, alpha in (("p50", 1.0), ("p90", 0.6), ("p99", 0.35)):
                right.plot(levels, [run["latency_ms"][q] for run in mine], style, alpha=alpha, label=f"{mode} {q}")
        left.set(title=f"{task}: throughput", xlabel="concurrency", ylabel="images/s")
        right.set(title=f"{task}: latency", xlabel="concurrency", ylabel="ms")
        for axis in (left, right):
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
            axis.set_xticks(sorted({run["concurrency"] for run in runs}))
        figure.tight_layout()
        path = out_dir / f"{task}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)

        served = sorted(
            (run for run in runs if run["mode"] == "served" and run.get("models")), key=lambda run: run["concurrency"]
        )
        if not served:
            continue
        models = sorted({name for run in served for name in run["models"]})
        figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(models) * len(served) ** 0.5 + 3), 4.2))
        width = 0.8 / len(served)
        for index, run in enumerate(served):
            xs = [m + index * width for m in range(len(models))]
            compute = [run["models"].get(name, {}).get("compute_ms", 0) for name in models]
            queue = [run["models"].get(name, {}).get("queue_ms", 0) for name in models]
            bars = axis.bar(xs, compute, width, label=f"compute, concurrency {run['concurrency']}")
            axis.bar(
                xs,
                queue,
                width,
                bottom=compute,
                color=bars.patches[0].get_facecolor(),
                alpha=0.35,
                hatch="//",
                label=f"queue, concurrency {run['concurrency']}",
            )
        axis.set_xticks([m + 0.4 - width / 2 for m in range(len(models))], models, rotation=20, ha="right", fontsize=8)
        axis.set(title=f"{task}: per-model time per request (Triton statistics)", ylabel="ms")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=7)
        figure.tight_layout()
        path = out_dir / f"{task}_models.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written
