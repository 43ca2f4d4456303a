"""What the server's workers hold (issue 31): the memory report, leaves without torch, arenas given back.

The in-process tests run a real ONNX Runtime session; the served ones read the real tritonserver's worker
processes from the kernel (``/proc``), as ``genserve.memory`` does.
"""

from __future__ import annotations

import time

import numpy as np

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


def test_an_idle_session_gives_its_arena_back(tmp_path):
    """One large call grows the arena by its 64 MiB intermediate; the session keeps it while calls come, and
    gives it back once they stop (the inputs were far below ARENA_SHRINK_ABOVE_BYTES: only the idle rule
    can see it)."""
    outer_product_graph(tmp_path / "outer.onnx")
    session = create_session(tmp_path / "outer.onnx")
    keeper = IdleShrink(session, ["total"], idle_s=0.5, budget_bytes=16 * MiB)

    def call(n: int) -> None:
        feed = {"x": np.ones((n, 1), np.float32)}
        keeper.starting()
        session.run(["total"], feed)
        keeper.finished([feed])

    call(64)
    call(4096)
    grown = anonymous_bytes() - keeper.baseline
    assert grown > 48 * MiB, f"the large call grew the process by {grown / MiB:.0f} MiB only"
    for _ in range(4):  # calls closer together than idle_s: the warm arena stays
        call(64)
        time.sleep(0.1)
    assert keeper.shrinks == 0
    deadline = time.monotonic() + 10
    while keeper.shrinks == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    held = anonymous_bytes() - keeper.baseline
    print(f"\nafter one 64 MiB call: +{grown / MiB:.0f} MiB; idle: +{held / MiB:.0f} MiB ({keeper.shrinks} shrink)")
    assert keeper.shrinks == 1 and held < 16 * MiB
    time.sleep(1.0)
    assert keeper.shrinks == 1, "an idle session within its budget is left alone"
    keeper.close()
