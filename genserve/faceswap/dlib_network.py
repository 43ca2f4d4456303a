"""dlib's face-recognition ResNet read from its weights file (``dlib_face_recognition_resnet_model_v1.dat``).

The weights file uses dlib's portable serialization (dlib/serialize.h): an integer is a control byte
(low 4 bits: how many little-endian bytes follow, bit 7: the sign); a string is such an integer length
and its bytes; a float is two such integers, mantissa and exponent (dlib/float_details.h); a bool is the
character '0' or '1'; a tensor (dlib/cuda/tensor.h) is a version, four dimensions and raw little-endian
float32 values. The network (dlib's ``dnn_face_recognition_ex.cpp``) is written from the loss layer
inward; every layer writes its subnetwork before its own details, so the layers come out in input-to-
output order. Tag and skip layers write no identifier: which tag a skip or an ``add_prev`` refers to is
this network's structure (:mod:`genserve.faceswap.embedding_graph`), and every weight's shape is checked
against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
