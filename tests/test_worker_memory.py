"""What the server's workers hold (issue 31): the memory report, leaves without torch, arenas given back.

The in-process tests run a real ONNX Runtime session; the served ones read the real tritonserver's worker
processes from the kernel (``/proc``), as ``genserve.memory`` does.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from genserve.onnx_sessions import IdleShrink, anonymous_bytes, create_session

MiB = 2**20


def outer_product_graph(path) -> None:
    """x [n, 1] -> sum(x @ x.T): its one intermediate is n x n floats (64 MiB at n = 4096), its input 16 KiB."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "xt"], ["square"]),
            helper.make_node("ReduceSum", ["square"], ["total"], keepdims=0),
        ],
        "outer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # what ONNX Runtime here reads (onnx writes its newest)
    onnx.save(model, path)


def idle_shrink_scenario(model_path: str) -> dict[str, float]:
    """One large call grows the arena by its 64 MiB intermediate; small calls closer together than ``idle_s``
    keep it; then the calls stop. What the process held above the session's baseline at each point, and the
    shrinks counted."""
    session = create_session(model_path)
    keeper = IdleShrink(session, ["total"], idle_s=0.5, budget_bytes=16 * MiB)

    def call(n: int) -> None:
        feed = {"x": np.ones((n, 1), np.float32)}
        keeper.starting()
        session.run(["total"], feed)
        keeper.finished([feed])

    call(64)
    call(4096)
    figures = {"grown": anonymous_bytes() - keeper.baseline}
    for _ in range(4):  # calls closer together than idle_s: the warm arena stays
        call(64)
        time.sleep(0.1)
    figures["shrinks_while_called"] = keeper.shrinks
    deadline = time.monotonic() + 10
    while keeper.shrinks == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    figures["held"] = anonymous_bytes() - keeper.baseline
    figures["shrinks"] = keeper.shrinks
    time.sleep(1.0)
    figures["shrinks_later"] = keeper.shrinks
    keeper.close()
    return figures


def test_an_idle_session_gives_its_arena_back(tmp_path):
    """The session keeps its grown arena while calls come and gives it back once, when they stop (the inputs
    were far below ARENA_SHRINK_ABOVE_BYTES: only the idle rule can see it). Run in a fresh process, as a
    leaf's is: in the test process other tests' threads allocate meanwhile, blurring what the session gives
    back."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    outer_product_graph(tmp_path / "outer.onnx")
    script = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from test_worker_memory import idle_shrink_scenario; "
        f"print(json.dumps(idle_shrink_scenario({str(tmp_path / 'outer.onnx')!r})))"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    figures = json.loads(completed.stdout.splitlines()[-1])
    grown, held = figures["grown"], figures["held"]
    print(f"\nafter one 64 MiB call: +{grown / MiB:.0f} MiB; idle: +{held / MiB:.0f} MiB ({figures['shrinks']} shrink)")
    assert grown > 48 * MiB, f"the large call grew the process by {grown / MiB:.0f} MiB only"
    assert figures["shrinks_while_called"] == 0
    assert figures["shrinks"] == 1 and held < 16 * MiB
    assert figures["shrinks_later"] == 1, "an idle session within its budget is left alone"


def mapped_libraries(pid: int) -> set[str]:
    """The file names of the shared objects a process maps (what it really loaded, whatever imported it)."""
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split()[-1].rsplit("/", 1)[-1] for line in maps if ".so" in line}


def loads_torch(pid: int) -> bool:
    return any(name.startswith("libtorch") for name in mapped_libraries(pid))


def loads_grpc(pid: int) -> bool:
    return any(name.startswith("cygrpc") for name in mapped_libraries(pid))


@pytest.mark.server
def test_the_report_names_every_process_and_an_idle_leaf_gives_its_arena_back(tmp_path_factory):
    """The OCR models served: the report holds tritonserver, the front and each model's workers, its totals
    their sums; the leaves load neither torch nor gRPC; the detector's arena, grown by one request (rapidocr
    scales every image to 736 pixels or more: about 200 MiB of activations), is given back once it idles."""
    from fixtures_server import loopback_server

    from genserve.client import Client
    from genserve.config import STACK_REPOSITORY_DIR
    from genserve.demo.samples import sign_image
    from genserve.memory import MiB as MIB
    from genserve.triton.model_config import copy_model, read_config, write_config

    repository = tmp_path_factory.mktemp("ocr_repo")
    for model in ("ocr", "ocr_det", "ocr_cls", "ocr_rec"):
        copy_model(STACK_REPOSITORY_DIR / model, repository, instances=1)
    config = read_config(repository / "ocr_det")
    config.parameters["arena_idle_s"].string_value = "1"
    write_config(config, repository / "ocr_det")

    with loopback_server(tmp_path_factory, repository) as server:
        idle = server.memory("idle")
        by_model = idle.by_model()
        assert set(by_model) == {"tritonserver", "front", "ocr", "ocr_det", "ocr_cls", "ocr_rec"}
        assert all(entry["pss"] > 0 and entry["rss"] >= entry["uss"] > 0 for entry in by_model.values())
        assert idle.pss == sum(p.pss for p in idle.processes) and idle.rss == sum(e["rss"] for e in by_model.values())
        assert "ocr_det" in idle.table() and f"PSS {idle.pss / MIB:.0f} MiB" in idle.table()
        summary = idle.summary()
        assert summary["processes"] == len(idle.processes) == 6 and summary["models"]["ocr"]["processes"] == 1

        leaves = [p for p in idle.processes if p.model in ("ocr_det", "ocr_cls", "ocr_rec")]
        assert len(leaves) == 3
        for leaf in leaves:
            assert not loads_torch(leaf.pid) and not loads_grpc(leaf.pid), leaf.model
        assert loads_grpc(server.front_pid)  # the check sees what a process maps: the front speaks gRPC

        detector = next(p for p in idle.processes if p.model == "ocr_det")
        with Client(server.grpc_url) as client:
            assert client.ocr(sign_image())  # the sign's text read
            grown = server.memory("after one request").by_model()["ocr_det"]["uss"]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                time.sleep(0.5)
                settled = server.memory("idle again").by_model()["ocr_det"]["uss"]
                if settled - detector.uss < 32 * MIB:
                    break
        print(
            f"\nocr_det USS: {detector.uss / MIB:.0f} MiB idle, {grown / MIB:.0f} MiB after one request, "
            f"{settled / MIB:.0f} MiB once idle"
        )
        assert grown - detector.uss > 64 * MIB, "the request did not grow the detector's arena: nothing to see"
        assert settled - detector.uss < 32 * MIB


@pytest.mark.server
def test_serve_prints_the_memory_report_when_ready_on_sigusr1_and_when_stopping(tmp_path):
    import signal

    from fixtures_server import start_serve

    serve, _, lines = start_serve(tmp_path, "--model", "ocr_cls", "--memory-report")
    try:

        def report(label: str) -> dict[str, str]:
            """The next report genserve serve prints: its header's label, then a line per model."""
            header = serve.stdout.readline()
            while header and "server memory (" not in header:
                header = serve.stdout.readline()
            assert f"server memory ({label}): PSS" in header, header
            processes = int(header.split(" in ")[-1].split()[0])
            serve.stdout.readline()  # the columns' names
            rows = [serve.stdout.readline().split() for _ in range(processes)]  # one process per model here
            return {row[0]: row for row in rows if row}

        ready = report("idle, every model loaded")
        assert {"ocr_cls", "tritonserver", "front"} <= set(ready) and ready["ocr_cls"][1] == "1"
        serve.send_signal(signal.SIGUSR1)
        assert "ocr_cls" in report("on SIGUSR1")
        serve.send_signal(signal.SIGINT)
        rest = serve.communicate(timeout=120)[0]
        assert "server memory (when stopping)" in rest and "Triton stopped." in rest, (serve.returncode, rest)
    finally:
        if serve.poll() is None:
            serve.kill()
