"""dlib's face-recognition ResNet as an ONNX graph (:mod:`genserve.faceswap.dlib_network` reads the weights).

The graph takes what :func:`genserve.faceswap.embedding.face_chip` returns (dlib's aligned 150x150 chip,
uint8 RGB, NHWC, any batch) and returns the 128-d descriptors. It is converted on first use (a few
seconds) and cached under :data:`genserve.config.CACHE_DIR`, keyed by the weights file's SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genserve import config
from genserve.faceswap.dlib_network import TAG_OR_SKIP, DlibFormatError, Layer, read_network

WEIGHTS_FILE = "dlib_face_recognition_resnet_model_v1.dat"
INPUT_NAME = "chip"
OUTPUT_NAME = "descriptor"
OPSET = 17
# Bumped when the graph this module writes changes, so that cached files are rebuilt.
GRAPH_VERSION = 1


class _GraphBuilder:
    """ONNX nodes for the layers in order, with every tensor's static shape (channels, rows, cols)."""

    def __init__(self):
        self.nodes, self.initializers, self.count = [], [], 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def constant(self, hint: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], **attributes) -> str:
        from onnx import helper

        output = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output


@dataclass
class _Value:
    name: str
    shape: tuple[int, int, int]  # channels, rows, cols (the batch is dynamic)


def _build_graph(layers: list[Layer]):
    """The ONNX model of the network ``read_network`` returned."""
    from onnx import TensorProto, helper

    if not layers or layers[0].kind != "input_rgb_image_sized":
        raise DlibFormatError("the network does not start with input_rgb_image_sized")
    if layers[-1].kind != "fc":
        raise DlibFormatError("the network does not end with its fc layer")
    rows, cols = layers[0].values["size"]
    graph = _GraphBuilder()
    current = _layers(graph, layers[1:], _normalized_input(graph, layers[0]))
    graph.nodes[-1].output[0] = OUTPUT_NAME
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", rows, cols, 3])]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", current.shape[0]])]
    model = helper.make_model(
        helper.make_graph(graph.nodes, "dlib_face_recognition_resnet_v1", inputs, outputs, graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="genserve.faceswap.embedding_graph",
    )
    model.ir_version = 8
    return model


def _normalized_input(graph: _GraphBuilder, layer: Layer) -> _Value:
    """uint8 NHWC RGB chips -> dlib's input tensor: (value - channel mean) / 256, NCHW."""
    from onnx import TensorProto

    rows, cols = layer.values["size"]
    pixels = graph.node("Transpose", [graph.node("Cast", [INPUT_NAME], to=TensorProto.FLOAT)], perm=[0, 3, 1, 2])
    means = np.array(layer.values["means"], dtype=np.float32).reshape(1, 3, 1, 1)
    scaled = graph.node(
        "Mul",
        [graph.node("Sub", [pixels, graph.constant("mean", means)]), graph.constant("scale", np.float32(1 / 256))],
    )
    return _Value(scaled, (3, rows, cols))


def _layers(graph: _GraphBuilder, layers: list[Layer], current: _Value) -> _Value:
    """The nodes of the layers above the input, in order.

    Tags and skips, as dlib's example arranges them: a lone tag marks a residual block's input (tag1);
    a tag directly followed by a skip marks a downsampling block's main path (tag2) and continues from
    tag1 (skip1). ``add_prev`` adds tag2 when one is open, else tag1. Where the two sides differ in
    size, dlib adds them as if the smaller were zero-padded at its end (cpu_dlib.cpp ``add``).
    """
    tag1 = tag2 = None
    index = 0
    while index < len(layers):
        layer = layers[index]
        following = layers[index + 1] if index + 1 < len(layers) else None
        if layer is TAG_OR_SKIP and following is TAG_OR_SKIP:
            if tag1 is None:
                raise DlibFormatError("a skip before any tag")
            tag2, current = current, tag1
            index += 1
        elif layer is TAG_OR_SKIP:
            tag1 = current
        elif layer.kind == "add_prev":
            other, tag2 = (tag2, None) if tag2 is not None else (tag1, None)
            if other is None:
                raise DlibFormatError("add_prev without a tag")
            current = _add_padded(graph, current, other)
        else:
            current, folded = _layer(graph, layer, current, following)
            index += folded
        index += 1
    return current


def _layer(graph: _GraphBuilder, layer: Layer, current: _Value, following: Layer | None) -> tuple[_Value, int]:
    """The nodes of one layer that neither tags nor adds, and how many following layers it folded in."""
    values = layer.values
    if layer.kind == "con":
        folded = int(following is not None and following.kind == "affine")
        return _convolution(graph, current, values, following), folded
    if layer.kind == "affine":
        raise DlibFormatError("an affine layer that does not follow a convolution")
    if layer.kind == "relu":
        return (current if values["disabled"] else _Value(graph.node("Relu", [current.name]), current.shape)), 0
    if layer.kind in ("max_pool", "avg_pool"):
        return _pool(graph, current, layer.kind, values), 0
    if layer.kind == "fc":
        return _fully_connected(graph, current, values), 0
    raise DlibFormatError(f"unexpected layer {layer.kind!r}")


def _fully_connected(graph: _GraphBuilder, below: _Value, values: dict) -> _Value:
    if values["bias_mode"] != 1:
        raise DlibFormatError("fc with a bias: dlib's face network has none")
    weights = values["weights"]
    if weights.shape[0] != int(np.prod(below.shape)):
        raise DlibFormatError(f"fc takes {weights.shape[0]} inputs, the layer below gives {below.shape}")
    flat = graph.node("Flatten", [below.name], axis=1)
    return _Value(graph.node("MatMul", [flat, graph.constant("fc", weights)]), (weights.shape[1], 0, 0))


def _convolution(graph: _GraphBuilder, below: _Value, values: dict, following: Layer | None) -> _Value:
    filters, biases = values["filters"], values["biases"].reshape(-1)
    if filters.shape[1] != below.shape[0]:
        raise DlibFormatError(f"a convolution over {filters.shape[1]} channels follows {below.shape[0]}")
    if not values["use_bias"]:
        biases = np.zeros_like(biases)
    if following is not None and following.kind == "affine" and not following.values["disabled"]:
        # affine(conv(x)) = gamma * (W x + b) + beta: one convolution with scaled filters.
        gamma, beta = following.values["gamma"].reshape(-1), following.values["beta"].reshape(-1)
        filters, biases = filters * gamma[:, None, None, None], biases * gamma + beta
    (kernel_rows, kernel_cols), (stride_rows, stride_cols), (pad_rows, pad_cols) = (
        values["kernel"],
        values["stride"],
        values["padding"],
    )
    output = graph.node(
        "Conv",
        [
            below.name,
            graph.constant("filters", filters.astype(np.float32)),
            graph.constant("biases", biases.astype(np.float32)),
        ],
        kernel_shape=[kernel_rows, kernel_cols],
        strides=[stride_rows, stride_cols],
        pads=[pad_rows, pad_cols, pad_rows, pad_cols],
    )
    _, rows, cols = below.shape
    return _Value(
        output,
        (
            filters.shape[0],
            1 + (rows + 2 * pad_rows - kernel_rows) // stride_rows,
            1 + (cols + 2 * pad_cols - kernel_cols) // stride_cols,
        ),
    )


def _pool(graph: _GraphBuilder, below: _Value, kind: str, values: dict) -> _Value:
    (window_rows, window_cols), (stride_rows, stride_cols), (pad_rows, pad_cols) = (
        values["window"],
        values["stride"],
        values["padding"],
    )
    channels, rows, cols = below.shape
    if window_rows == 0 and window_cols == 0 and kind == "avg_pool":  # dlib's avg_pool_everything
        return _Value(graph.node("GlobalAveragePool", [below.name]), (channels, 1, 1))
    if pad_rows or pad_cols:
        raise DlibFormatError("padded pooling: dlib's face network has none")
    output = graph.node(
        "MaxPool" if kind == "max_pool" else "AveragePool",
        [below.name],
        kernel_shape=[window_rows, window_cols],
        strides=[stride_rows, stride_cols],
    )
    return _Value(output, (channels, 1 + (rows - window_rows) // stride_rows, 1 + (cols - window_cols) // stride_cols))


def _add_padded(graph: _GraphBuilder, a: _Value, b: _Value) -> _Value:
    shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape))

    def padded(value: _Value) -> str:
        if value.shape == shape:
            return value.name
        ends = [0, *(full - own for full, own in zip(shape, value.shape))]
        return graph.node("Pad", [value.name, graph.constant("pads", np.array([0] * 4 + ends, dtype=np.int64))])

    return _Value(graph.node("Add", [padded(a), padded(b)]), shape)


def network_to_onnx(weights: Path):
    """dlib's face-recognition network in ``weights`` as an ``onnx.ModelProto``."""
    return _build_graph(read_network(Path(weights).read_bytes()))


# --- the converted file ---------------------------------------------------------------------------


def weights_file() -> Path:
    from genserve.faceswap.dlib_files import model_file

    return model_file(WEIGHTS_FILE)


_convert_lock = threading.Lock()


def onnx_file(weights: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The ONNX file of dlib's network in ``weights`` (default: the installed one), converted on first
    use and cached by the weights' SHA-256 (another weights file gets its own)."""
    weights = Path(weights) if weights else weights_file()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    path = Path(cache_dir or config.CACHE_DIR) / "face_embedding" / f"dlib_resnet_{digest}_g{GRAPH_VERSION}.onnx"
    with _convert_lock:
        if not path.is_file():
            import onnx

            model = network_to_onnx(weights)
            onnx.checker.check_model(model)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written beside and renamed: processes converting at once never read half a file.
            handle, staging = tempfile.mkstemp(dir=path.parent, prefix=".convert-", suffix=".onnx")
            with os.fdopen(handle, "wb") as out:
                out.write(model.SerializeToString())
            os.replace(staging, path)
    return path
