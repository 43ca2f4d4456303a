"""The schema of a served model's wire contract: what a :class:`Contract` is made of, and how it is used.

A :class:`Contract` says what travels to and from one served model: the request's *fields*
(:class:`Field`: name, type, range, default, the tensor it travels in) and the response's *outputs*
(:class:`Output`: tensor name, element type, shape, how the bytes are encoded); :class:`Tensor` is one
tensor as ``config.pbtxt`` declares it. The contracts of the served tasks are in :mod:`genserve.protocol`.

A field travels either in its own input tensor (``PROMPT``, ``IMAGE``, ``STEPS``: shape [1]) or as a
key of the request's ``OPTIONS`` tensor, a JSON object (read within bounds by :func:`parse_options`).
Either way :meth:`Contract.check` is what decides whether its value is acceptable, so a bad value gets
the same message from whichever client sent it, and the in-process API checks with the same code.

numpy only: imported by the client, by the Triton models and by the configuration writer alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from genserve import config
from genserve.errors import InvalidInputError
from genserve.metadata import Metadata

# Element types as numpy names ("BYTES": variable-length bytes, numpy object arrays), and Triton's
# spelling of each in config.pbtxt. The one map of element types in the stack.
BYTES = "BYTES"
TRITON_TYPES = {
    BYTES: "TYPE_STRING",
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}
# Export precisions and the element type of their floating tensors.
PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

OPTIONS_TENSOR = "OPTIONS"
# Field types: how a value is written in a tensor, and which Python values are accepted for it.
FIELD_TYPES = ("image", "text", "int", "float", "bool")
_DEFAULT_DTYPES = {"image": BYTES, "text": BYTES, "int": "int32", "float": "float32", "bool": "bool"}
_PYTHON_TYPES = {"image": bytes, "text": str, "int": int, "float": float, "bool": bool}


def shown(value: Any, limit: int = 60) -> str:
    """A value as an error message quotes it: its repr, cut to ``limit`` characters (a message must not
    echo a huge input: gRPC carries it in metadata, and a log line would hold it)."""
    text = repr(value) if not isinstance(value, (bytes, bytearray)) or len(value) <= limit else f"<{len(value)} bytes>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def named(names: list[str], limit: int = 8) -> str:
    """Names for a message: at most ``limit`` of them, each cut short, and how many more there are."""
    listed = ", ".join(shown(name, 40).strip("'") for name in names[:limit])
    return listed + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dataclass(frozen=True)
class Field:
    """One thing a request may say.

    ``tensor`` names the input tensor it travels in; ``None`` puts it in the ``OPTIONS`` JSON object.
    ``default`` is what the server uses when the field is absent (``None``: the model decides, e.g.
    the pipeline's own number of steps). ``minimum``/``maximum`` bound numbers (``exclusive_minimum``:
    strictly above), ``choices`` bound text.
    """

    name: str
    type: str
    help: str
    tensor: str | None = None
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    dtype: str | None = None  # the tensor's element type; default by type (int32, float32, BYTES, bool)
    max_pixels: int | None = None  # images: the task's pixel limit (read from the header, not decoded)

    def __post_init__(self) -> None:
        if self.type not in FIELD_TYPES:
            raise ValueError(f"field {self.name}: type must be one of {FIELD_TYPES}, not {self.type!r}")

    @property
    def element_type(self) -> str:
        return self.dtype or _DEFAULT_DTYPES[self.type]

    @property
    def python_type(self) -> Any:
        """The type of the field's checked value as a request class holds it (``SwapOptions``,
        ``GenerationRequest``): ``None`` allowed where it is the default."""
        kind = _PYTHON_TYPES[self.type]
        return kind if self.required or self.default is not None else kind | None

    @property
    def label(self) -> str:
        """How messages name the field: by its name, as the client API and the command line do."""
        return self.name

    def check(self, value: Any) -> Any:
        """The value as the server uses it; :class:`InvalidInputError` when it is not acceptable."""
        if self.type == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise InvalidInputError(f"{self.label} must be true or false, not {shown(value)}")
            return bool(value)
        if self.type == "text":
            return self._checked_text(value)
        if self.type == "image":
            return self._checked_image(value)
        return self._in_range(self._number(value))

    def _number(self, value: Any) -> int | float:
        if self.type == "int":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise InvalidInputError(f"{self.label} must be an integer, not {shown(value)}")
            return int(value)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InvalidInputError(f"{self.label} must be a number, not {shown(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise InvalidInputError(f"{self.label} must be a finite number, not {value}")
        return value

    def _in_range(self, value: int | float) -> int | float:
        too_low = self.minimum is not None and (
            value <= self.minimum if self.exclusive_minimum else value < self.minimum
        )
        if too_low or (self.maximum is not None and value > self.maximum):
            raise InvalidInputError(f"{self.label} must be {self._range()}, not {shown(value)}")
        return value

    def _checked_text(self, value: Any) -> str:
        if not isinstance(value, str):
            raise InvalidInputError(f"{self.label} must be text, not {shown(value)}")
        if len(value) > config.MAX_TEXT_CHARS:
            raise InvalidInputError(
                f"{self.label} is {len(value)} characters long; at most {config.MAX_TEXT_CHARS} are accepted"
            )
        if self.choices and value.lower() not in self.choices:
            raise InvalidInputError(f"{self.label} must be one of {', '.join(self.choices)}, not {shown(value)}")
        return value.lower() if self.choices else value

    def _checked_image(self, value: Any) -> bytes:
        if not isinstance(value, (bytes, bytearray)):
            raise InvalidInputError(f"{self.label} must be encoded image bytes")
        if self.max_pixels:
            from genserve.imaging import check_pixel_limit

            check_pixel_limit(value, self.max_pixels, what=self.label)
        return bytes(value)

    def _range(self) -> str:
        if self.minimum is not None and self.maximum is not None and not self.exclusive_minimum:
            return f"between {self.minimum:g} and {self.maximum:g}"
        low = None if self.minimum is None else f"{'above' if self.exclusive_minimum else 'at least'} {self.minimum:g}"
        high = None if self.maximum is None else f"at most {self.maximum:g}"
        return " and ".join(part for part in (low, high) if part)

    # --- one value in one tensor --------------------------------------------------------------------

    def encode(self, value: Any) -> np.ndarray:
        if self.type == "image":
            return np.array([bytes(value)], dtype=np.object_)
        if self.type == "text":
            return np.array([str(value).encode("utf-8")], dtype=np.object_)
        return np.array([value], dtype=self.element_type)

    def decode(self, array: np.ndarray) -> Any:
        values = np.asarray(array).reshape(-1)
        if values.size != 1:
            raise InvalidInputError(f"{self.label} must hold exactly one value, not {values.size}")
        value = values[0]
        if self.type in ("image", "text"):
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, (bytes, bytearray, np.bytes_)):
                raise InvalidInputError(f"{self.label} must be sent as BYTES")
            if self.type == "image":
                return bytes(value)
            try:
                return bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInputError(f"{self.label} is not UTF-8 text") from None
        return value.item() if isinstance(value, np.generic) else value


# Each element of a BYTES tensor travels as its length (4 bytes, little-endian), then its bytes.
_BYTES_LENGTH = 4


def _field_bytes(field: Field) -> int:
    if field.type == "image":
        return _BYTES_LENGTH + config.MAX_IMAGE_BYTES
    if field.type == "text":
        return _BYTES_LENGTH + 4 * config.MAX_TEXT_CHARS  # UTF-8: at most 4 bytes a character
    return np.dtype(field.element_type).itemsize


@dataclass(frozen=True)
class Tensor:
    """One tensor as ``config.pbtxt`` declares it."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False

    @property
    def triton_type(self) -> str:
        return TRITON_TYPES[self.dtype]


@dataclass(frozen=True)
class Output:
    """One output tensor of a response, and the key its value gets in the decoded response.

    ``encoding`` says how BYTES elements are read: ``raw`` (image bytes), ``utf-8`` (text) or
    ``json`` (one JSON document: the tensor holds one element). ``schema``: the class a JSON document
    is decoded to and encoded from (:mod:`genserve.metadata`); None: plain JSON values.
    """

    name: str
    key: str
    dtype: str
    dims: tuple[int, ...]
    help: str
    encoding: str = "raw"
    schema: type[Metadata] | None = None

    @property
    def tensor(self) -> Tensor:
        return Tensor(self.name, self.dtype, self.dims)

    def encode(self, value: Any) -> np.ndarray:
        if self.dtype != BYTES:
            return np.ascontiguousarray(np.asarray(value, dtype=self.dtype))
        if self.encoding == "json":
            document = value.to_json() if self.schema is not None and isinstance(value, self.schema) else value
            return np.array([json.dumps(document, ensure_ascii=False).encode("utf-8")], dtype=np.object_)
        items = list(value) if self.dims == (-1,) else [value]
        encoded = [item.encode("utf-8") if isinstance(item, str) else bytes(item) for item in items]
        return np.array(encoded, dtype=np.object_).reshape(-1 if self.dims == (-1,) else self.dims)

    def decode(self, array: np.ndarray | None) -> Any:
        if self.dtype != BYTES:
            return np.asarray(array)
        items = [] if array is None else [bytes(item) for item in np.asarray(array).reshape(-1)]
        if self.encoding == "json" and self.schema is not None:
            return self.schema.from_json(json.loads(items[0])) if items else None
        if self.encoding == "json":
            return json.loads(items[0]) if items else {}
        if self.encoding == "utf-8":
            items = [item.decode("utf-8") for item in items]
        return items if self.dims == (-1,) else (items[0] if items else None)


@dataclass(frozen=True)
class Contract:
    """What one served model takes and returns; ``model`` is its default name in a repository.

    A ``streaming`` model is decoupled (Triton's term): it answers a request with several responses,
    each holding some of the outputs (progress first, the result last), over gRPC streaming only.
    """

    model: str
    summary: str
    fields: tuple[Field, ...]
    outputs: tuple[Output, ...]
    streaming: bool = False
    # The bytes of a request's images together (None: each image's own limit only), so that its largest
    # request stays within config.MAX_REQUEST_BYTES however many images it may carry.
    max_image_bytes: int | None = None

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(names) != len(set(names)):
            raise ValueError(f"{self.model}: two fields share a name")

    def field(self, name: str) -> Field:
        for field in self.fields:
            if field.name == name:
                return field
        raise KeyError(f"{self.model} has no field {name!r}")

    @property
    def option_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.tensor is None)

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        """The input tensors, as config.pbtxt declares them (``max_batch_size: 0``, shape [1] each)."""
        tensors = [Tensor(f.tensor, f.element_type, (1,), optional=not f.required) for f in self.fields if f.tensor]
        if self.option_fields:
            tensors.append(Tensor(OPTIONS_TENSOR, BYTES, (1,), optional=True))
        return tuple(tensors)

    def max_input_bytes(self) -> dict[str, int]:
        """The most bytes each input tensor of a valid request holds, as Triton's wire formats carry it (a
        BYTES element with its 4-byte length): an image field :data:`~genserve.config.MAX_IMAGE_BYTES`, a text
        field :data:`~genserve.config.MAX_TEXT_CHARS` characters of UTF-8, ``OPTIONS``
        :data:`~genserve.config.MAX_OPTIONS_BYTES`, a number its element's size; and under the image tensors'
        names joined by ``+`` (``ORI_IMAGE+TARGET_IMAGE+RESULT_IMAGE``) what they take together
        (:attr:`max_image_bytes`). genserve's front refuses a request that declares more before it reads or
        forwards it."""
        limits = {
            OPTIONS_TENSOR: _BYTES_LENGTH + config.MAX_OPTIONS_BYTES,
            **{f.tensor: _field_bytes(f) for f in self.fields if f.tensor},
        }
        limits = {tensor.name: limits[tensor.name] for tensor in self.inputs}
        images = [f.tensor for f in self.fields if f.tensor and f.type == "image"]
        if self.max_image_bytes is not None and len(images) > 1:
            limits["+".join(images)] = self.max_image_bytes + _BYTES_LENGTH * len(images)
        return limits

    @property
    def output_names(self) -> list[str]:
        return [output.name for output in self.outputs]

    # --- values ----------------------------------------------------------------------------------------

    def check(self, values: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
        """Every field's value as the server uses it: given values checked, defaults filled in.

        Raises :class:`InvalidInputError` for an unknown name, a missing required field or a bad value.
        ``partial``: check only the values given (no defaults, nothing required).
        """
        known = {f.name for f in self.fields}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInputError(f"{self.model} takes no {named(unknown)}; it takes {', '.join(sorted(known))}")
        checked = {}
        for field in self.fields:
            value = values.get(field.name)
            if value is not None:
                checked[field.name] = field.check(value)
            elif partial:
                continue
            elif field.required:
                raise InvalidInputError(
                    f"{field.name} ({field.tensor or OPTIONS_TENSOR}) is missing; {self.model} needs it"
                )
            else:
                checked[field.name] = field.default
        images = sum(len(checked[f.name]) for f in self.fields if f.type == "image" and checked.get(f.name))
        if self.max_image_bytes is not None and images > self.max_image_bytes:
            raise InvalidInputError(
                f"the images of one {self.model} request are {images} bytes together; at most "
                f"{self.max_image_bytes} are accepted"
            )
        return checked

    # --- the client's side ----------------------------------------------------------------------------

    def encode_request(self, **values: Any) -> dict[str, np.ndarray]:
        """Input tensors for a request; ``None`` values are left out (the server's default applies).

        Values are not range-checked here: the server is the judge, with the same :meth:`check`.
        """
        unknown = sorted(set(values) - {f.name for f in self.fields})
        if unknown:
            raise TypeError(f"{self.model} takes no {', '.join(unknown)}")
        tensors: dict[str, np.ndarray] = {}
        options = {}
        for field in self.fields:
            value = values.get(field.name)
            if value is None:
                if field.required:
                    raise TypeError(f"{self.model} needs {field.name}")
                continue
            if field.tensor:
                tensors[field.tensor] = field.encode(value)
            else:
                options[field.name] = value
        if options:
            tensors[OPTIONS_TENSOR] = np.array([json.dumps(options).encode("utf-8")], dtype=np.object_)
        return tensors

    def decode_response(self, arrays: Mapping[str, np.ndarray | None]) -> dict[str, Any]:
        return {output.key: output.decode(arrays.get(output.name)) for output in self.outputs}

    # --- the server's side ----------------------------------------------------------------------------

    def decode_request(self, tensor: Callable[[str], np.ndarray | None]) -> dict[str, Any]:
        """The request's checked values; ``tensor(name)`` gives an input tensor's array, or None."""
        values: dict[str, Any] = {}
        for field in self.fields:
            if field.tensor:
                array = tensor(field.tensor)
                if array is not None:
                    values[field.name] = field.decode(array)
        if self.option_fields:
            array = tensor(OPTIONS_TENSOR)
            if array is not None:
                values.update(self._options(array))
        return self.check(values)

    def _options(self, array: np.ndarray) -> dict[str, Any]:
        values = np.asarray(array).reshape(-1)
        if values.size == 1 and isinstance(values[0], (bytes, np.bytes_)) and len(values[0]) > config.MAX_OPTIONS_BYTES:
            raise InvalidInputError(
                f"{OPTIONS_TENSOR} is {len(values[0])} bytes; at most {config.MAX_OPTIONS_BYTES} are accepted"
            )
        text = Field(OPTIONS_TENSOR, "text", "", tensor=OPTIONS_TENSOR).decode(array)
        if not text.strip():
            return {}
        options = parse_options(text)
        allowed = {f.name for f in self.option_fields}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise InvalidInputError(f"unknown option(s) {named(unknown)}; known: {', '.join(sorted(allowed))}")
        return {name: value for name, value in options.items() if value is not None}

    def encode_response(self, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {output.name: output.encode(values[output.key]) for output in self.outputs}


def parse_options(text: str) -> dict[str, Any]:
    """An ``OPTIONS`` JSON object, bounded before and while it is parsed: its size, its nesting (Python's
    parser recurses, so a deep one would raise RecursionError), its key count and the digits of each
    number (Python refuses to convert an integer of more than 4300 digits)."""
    if len(text) > config.MAX_OPTIONS_BYTES:
        raise InvalidInputError(
            f"{OPTIONS_TENSOR} is {len(text)} characters; at most {config.MAX_OPTIONS_BYTES} are accepted"
        )
    depth = _nesting_depth(text)
    if depth > config.MAX_OPTIONS_DEPTH:
        raise InvalidInputError(
            f"{OPTIONS_TENSOR} is nested {depth} deep; at most {config.MAX_OPTIONS_DEPTH} levels are accepted"
        )

    def number(kind: Callable[[str], Any]) -> Callable[[str], Any]:
        def parse(digits: str) -> Any:
            if len(digits) > config.MAX_NUMBER_DIGITS:
                raise InvalidInputError(
                    f"{OPTIONS_TENSOR} holds a number of {len(digits)} characters; "
                    f"at most {config.MAX_NUMBER_DIGITS} are accepted"
                )
            return kind(digits)

        return parse

    def bounded_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len(pairs) > config.MAX_OPTIONS_KEYS:
            raise InvalidInputError(
                f"{OPTIONS_TENSOR} has an object of {len(pairs)} keys; at most {config.MAX_OPTIONS_KEYS} are accepted"
            )
        return dict(pairs)

    try:
        options = json.loads(text, parse_int=number(int), parse_float=number(float), object_pairs_hook=bounded_object)
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{OPTIONS_TENSOR} is not valid JSON: {error}") from None
    if not isinstance(options, dict):
        raise InvalidInputError(f"{OPTIONS_TENSOR} must be a JSON object")
    return options


def _nesting_depth(text: str) -> int:
    """How deep JSON text nests arrays and objects (brackets inside strings not counted)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest
