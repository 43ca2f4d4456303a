"""Stand-ins for a diffusers pipeline's heavy modules that call the exported models instead.

A diffusers pipeline only ever touches its text encoders, denoiser and VAE in a few ways: it calls
them (or ``vae.encode``/``vae.decode``), reads their ``config``, ``dtype`` and ``device``, and wraps
calls in ``transformer.cache_context(...)``. :class:`ModuleProxy` offers exactly that, and runs each
call as one request to the exported component (a Triton leaf model over BLS, or an ONNX Runtime
session in-process): the pipeline's own code (tokenization, scheduler, guidance, latent packing,
image processing) runs unchanged, so the served image follows the in-process one by construction.

This is what optimum's ``ORTDiffusionPipeline`` does with ONNX Runtime sessions; here the call goes
through a *runner*: ``runner(model_name, inputs, output_names) -> outputs``, tensors as torch.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from genserve.errors import GenServeError
from genserve.families import Family, TensorSpec, component_config
from genserve.manifest import ComponentEntry, Manifest, TensorEntry
from genserve.schema import PRECISION_DTYPES

Runner = Callable[[str, dict[str, torch.Tensor], list[str]], dict[str, torch.Tensor]]
# Keywords a pipeline may pass with a value that the exported graphs already assume: the hidden states
# are exported as outputs, and an AutoencoderKL's decode ignores its generator.
ALWAYS_IGNORED = frozenset({"output_hidden_states", "generator"})


class UnsupportedCallError(GenServeError, RuntimeError):
    """The pipeline made a call its exported component cannot take (a keyword the graph does not honour)."""


@dataclass
class CallStats:
    """Time spent in calls to the exported components during one pipeline run, per component."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    per_call: dict[str, list[float]] = field(default_factory=dict)

    def add(self, component: str, seconds: float) -> None:
        self.seconds[component] = self.seconds.get(component, 0.0) + seconds
        self.calls[component] = self.calls.get(component, 0) + 1
        self.per_call.setdefault(component, []).append(seconds)


# The statistics of the pipeline run in progress in this thread (or asyncio task), if one records.
_CURRENT_STATS: contextvars.ContextVar[CallStats | None] = contextvars.ContextVar("genserve_call_stats", default=None)


@contextlib.contextmanager
def recording_calls() -> Iterator[CallStats]:
    """Record the proxies' calls made inside the block (by this thread or task) into a new CallStats."""
    stats = CallStats()
    token = _CURRENT_STATS.set(stats)
    try:
        yield stats
    finally:
        _CURRENT_STATS.reset(token)


@dataclass(frozen=True)
class Component:
    """One exported component as a proxy calls it: the served model's name and the tensors' specs."""

    name: str  # the component (``vae_decoder``)
    model: str  # the model to call (``sd_vae_decoder`` in a repository with prefixes)
    batched: bool  # a Triton batching model: one-value-per-sample inputs travel as [batch, 1]
    kind: str
    method: str
    inputs: tuple[TensorEntry, ...]  # the exported graph's inputs
    outputs: tuple[TensorSpec, ...]  # the family's specs: name and where the output goes


class ModuleProxy:
    """A pipeline module (``unet``, ``vae``, ``text_encoder``...) whose methods call exported models."""

    def __init__(
        self,
        module: str,
        class_ref: tuple[str, str],
        config: Mapping[str, Any],
        components: list[Component],
        runner: Runner,
        dtype: torch.dtype,
    ):
        from diffusers.configuration_utils import FrozenDict

        self._module = module
        self._library, self._class_name = class_ref
        self.config = FrozenDict(config)
        self.dtype = dtype
        self.device = torch.device("cpu")
        self._components = {component.method: component for component in components}
        self._runner = runner
        cls = getattr(importlib.import_module(self._library), self._class_name)
        if "projection_class_embeddings_input_dim" in config:
            # An SDXL UNet: its pipelines check the added-condition width on the real module's layer.
            self.add_embedding = SimpleNamespace(
                linear_1=SimpleNamespace(in_features=config["projection_class_embeddings_input_dim"])
            )
        # The original signatures, to bind positional arguments as the real module would.
        self._signatures = {method: inspect.signature(getattr(cls, method)) for method in self._components}

    def __repr__(self) -> str:
        models = ", ".join(c.model for c in self._components.values())
        return f"ModuleProxy({self._module}: {self._class_name} -> {models})"

    # --- what the pipelines call ------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        return self._call("forward", args, kwargs)

    def forward(self, *args, **kwargs):
        return self._call("forward", args, kwargs)

    def encode(self, *args, **kwargs):
        return self._call("encode", args, kwargs)

    def decode(self, *args, **kwargs):
        return self._call("decode", args, kwargs)

    @contextlib.contextmanager
    def cache_context(self, name: str):  # diffusers' cache hooks: nothing to cache in a proxy
        yield

    def to(self, *args, **kwargs) -> ModuleProxy:  # the served model decides where it runs
        return self

    def eval(self) -> ModuleProxy:
        return self

    def modules(self):  # diffusers looks for offloading hooks on submodules: a proxy has none
        return iter((self,))

    # --- the call -----------------------------------------------------------------------------------

    def _call(self, method: str, args: tuple, kwargs: dict):
        component = self._components.get(method)
        if component is None:
            raise UnsupportedCallError(f"{self._module}.{method} was not exported; the pipeline cannot call it")
        bound = self._signatures[method].bind(None, *args, **kwargs).arguments
        bound.pop(next(iter(bound)))  # self
        for name, value in list(bound.items()):  # flatten **kwargs
            if (
                isinstance(value, dict)
                and self._signatures[method].parameters[name].kind is inspect.Parameter.VAR_KEYWORD
            ):
                bound.pop(name)
                bound.update(value)
        return_dict = bound.pop("return_dict", True)
        inputs = self._inputs(component, bound)
        started = time.perf_counter()
        outputs = self._runner(component.model, inputs, [spec.name for spec in component.outputs])
        stats = _CURRENT_STATS.get()
        if stats is not None:
            stats.add(component.name, time.perf_counter() - started)
        return self._result(component, outputs, return_dict)

    def _inputs(self, component: Component, arguments: dict[str, Any]) -> dict[str, torch.Tensor]:
        self._refuse_unexported(component, arguments)
        batch = None
        tensors: dict[str, torch.Tensor] = {}
        for entry in component.inputs:
            value = _argument(arguments, entry.argument)
            if value is None:
                raise UnsupportedCallError(f"{component.name}: input {entry.argument!r} is missing")
            tensor = torch.as_tensor(value)
            tensors[entry.name] = tensor.to(getattr(torch, entry.dtype))
            if entry.batched and tensor.ndim == len(entry.dims) >= 2:
                batch = tensor.shape[0] if batch is None else batch
        for entry in component.inputs:
            tensors[entry.name] = _per_sample(component, entry, tensors[entry.name], batch).contiguous()
        return tensors

    def _refuse_unexported(self, component: Component, arguments: dict[str, Any]) -> None:
        """Unset options (attention kwargs, ControlNet residuals...) are what the graphs were exported
        with; a set one would be silently dropped, so it is refused."""
        taken = {entry.argument.split(".")[0] for entry in component.inputs}
        for name, value in arguments.items():
            if name in taken or name in ALWAYS_IGNORED or value is None or value is False:
                continue
            if isinstance(value, (dict, list, tuple)) and not value:
                continue
            if name == "attention_mask" and isinstance(value, torch.Tensor) and bool(value.all()):
                continue  # an all-ones mask is the same as none
            raise UnsupportedCallError(
                f"{self._module}.{component.method}: the exported {component.name} does not take {name!r}"
            )

    def _result(self, component: Component, outputs: dict[str, torch.Tensor], return_dict: bool):
        if component.kind == "vae_encoder":
            from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
            from diffusers.models.modeling_outputs import AutoencoderKLOutput

            distribution = DiagonalGaussianDistribution(outputs["latent_parameters"])
            return AutoencoderKLOutput(latent_dist=distribution) if return_dict else (distribution,)
        if component.kind == "text_encoder":
            from transformers.modeling_outputs import BaseModelOutputWithPooling
            from transformers.models.clip.modeling_clip import CLIPTextModelOutput

            fields: dict[str, Any] = {}
            for spec in component.outputs:
                if spec.path[0] == "hidden_states":
                    # Only the penultimate layer was exported: the tuple holds it at index -2.
                    fields["hidden_states"] = (outputs[spec.name], outputs.get("last_hidden_state"))
                else:
                    fields[spec.path[0]] = outputs[spec.name]
            # CLIPTextModelWithProjection (SDXL's second encoder) answers text_embeds first: SDXL pipelines
            # read the pooled embedding as output[0].
            output_class = CLIPTextModelOutput if "text_embeds" in fields else BaseModelOutputWithPooling
            return output_class(**fields)
        # Denoisers and the VAE decoder: a tuple, as with return_dict=False; diffusers' output class otherwise.
        result = tuple(outputs[spec.name] for spec in component.outputs)
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=result[0])
        return result


def _per_sample(component: Component, entry, tensor: torch.Tensor, batch: int | None) -> torch.Tensor:
    """Pipelines pass one timestep (or guidance) for the whole batch, and FLUX's position ids without a
    batch dimension; the graphs take one per sample (equal rows, so that Triton can batch them)."""
    if entry.batched and tensor.ndim == len(entry.dims) - 1 >= 1:
        if batch is None:
            raise UnsupportedCallError(f"{component.name}: no input gives the batch size for {entry.argument!r}")
        return tensor.unsqueeze(0).expand(batch, *tensor.shape)
    if entry.dims == ("batch",):
        if batch is not None and tensor.numel() == 1:
            tensor = tensor.reshape(1).expand(batch)
        if component.batched:
            tensor = tensor.reshape(-1, 1)
    return tensor


def _argument(arguments: Mapping[str, Any], path: str) -> Any:
    """A call's argument by its export path: ``sample``, or ``added_cond_kwargs.text_embeds`` (SDXL's UNet
    takes its added conditions in a dict)."""
    value: Any = arguments
    for key in path.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


# --- building the proxies of an export ----------------------------------------------------------------


def build_proxies(
    family: Family,
    manifest: Manifest,
    pipeline_dir: Path,
    runner: Runner,
    model_names: Mapping[str, str] | None = None,
    triton: bool = True,
) -> dict[str, ModuleProxy]:
    """One proxy per exported pipeline module, keyed by the pipeline's attribute name; ``model_names``
    maps a component to the model serving it (default: the component's name). ``triton``: the runner
    calls Triton models, whose batching ones take one-value-per-sample inputs as [batch, 1]."""
    model_index = json.loads((pipeline_dir / "model_index.json").read_text())
    dtype = getattr(torch, PRECISION_DTYPES[manifest.precision])
    by_module: dict[str, list[Component]] = {}
    for name, entry in manifest.components.items():
        component = _component(family, entry, (model_names or {}).get(name, name), batched=triton and entry.batched)
        by_module.setdefault(entry.module, []).append(component)
    proxies = {}
    for module, components in by_module.items():
        config = component_config(module, json.loads((pipeline_dir / module / "config.json").read_text()))
        proxies[module] = ModuleProxy(module, tuple(model_index[module]), config, components, runner, dtype)
    return proxies


def _component(family: Family, entry: ComponentEntry, model: str, batched: bool) -> Component:
    return Component(
        name=entry.name,
        model=model,
        batched=batched,
        kind=entry.kind,
        method=entry.method,
        inputs=entry.inputs,
        outputs=family.component(entry.name).outputs,
    )


def load_pipeline(pipeline_class: str, pipeline_dir: Path, proxies: Mapping[str, ModuleProxy]):
    """The diffusers pipeline ``pipeline_class`` over the export's light files (tokenizers, scheduler)
    with the proxies in place of the heavy modules; optional modules absent from the folder are None."""
    import diffusers

    cls = getattr(diffusers, pipeline_class)
    model_index = json.loads((pipeline_dir / "model_index.json").read_text())
    kwargs: dict[str, Any] = {}
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        if name in proxies:
            kwargs[name] = proxies[name]
        elif isinstance(model_index.get(name), list) and model_index[name][0] is not None:
            library, class_name = model_index[name]
            loader = getattr(importlib.import_module(library), class_name)
            kwargs[name] = loader.from_pretrained(pipeline_dir / name)
        elif name == "requires_safety_checker":
            kwargs[name] = False
        elif parameter.default is inspect.Parameter.empty:
            kwargs[name] = None  # safety checker, feature extractor, image encoder: not served
    pipeline = cls(**kwargs)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


# --- runners --------------------------------------------------------------------------------------------


class OrtRunner:
    """Runs the exported components in-process with ONNX Runtime (checks and debugging without a server)."""

    def __init__(self, export_dir: Path, manifest: Manifest):
        from genserve.torch_sessions import open_session

        self.sessions = {
            name: open_session(Path(export_dir) / entry.path) for name, entry in manifest.components.items()
        }
        self.lock = threading.Lock()

    def __call__(self, model: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, torch.Tensor]:
        from genserve.torch_sessions import run_torch

        session = self.sessions[model]
        with self.lock:
            results = run_torch(session, inputs, outputs)
        return dict(zip(outputs, results, strict=True))
