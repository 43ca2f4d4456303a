"""The pipeline host: one Python-backend model whose process runs the diffusers pipelines of every pipeline
model of a repository.

A pipeline model's process holds torch and diffusers: about 320 MiB of private memory before any
pipeline, whatever the checkpoint (docs/diffusion-serving.md). One per pipeline model, plain and
streaming twins apart, made the tiny demo repository twelve of them. So the pipelines live here, in one
process (``diffusion_pipelines``, written by ``genserve build-repo``; ``--pipeline-instances N`` gives it
N), and the pipeline models clients call (``sd_text_to_image``, ``sd_text_to_image_stream``...,
:mod:`genserve.triton.pipeline_models`) are light relays that forward each request here over BLS and
send its answers back. Both twins of a task run on the same service (the same pipeline copies, workers
and backlog); the served image is the same either way, as before.

Its folder holds one sub-folder per plain pipeline model it serves (``1/sd_text_to_image/``: that
model's ``serving.json``, the export's ``manifest.json`` and the pipeline's light files). A pipeline is
built when its first request comes (the relays' warm-up at load): a server that loads only some of the
repository's pipeline models builds only theirs, and calls only their leaves.

The host is decoupled. Per request (inputs: the task's tensors and ``MODEL``, the name of the pipeline
model the client called) it sends, through :class:`~genserve.triton.workers.Replies` (off the workers'
path): first ``WORKER`` (its process id: the relay watches that it lives), then for a streaming model a
``PROGRESS`` after the first denoising step and after each step ending ``progress_interval_s`` (serving.json)
or more after the last one reported, then ``IMAGES`` and ``METADATA``, or ``ERROR`` (JSON: the failure's kind in the
error table and its message, which a BLS caller would otherwise get as INTERNAL whatever it was). A
relay cancels a request by sending ``CANCEL`` (the request's id) and says which process it is
(``CALLER``): a request whose relay gave up or died stops between two denoising steps. ``BURST`` runs the
request that many times at once (the relays' warm-up: every pipeline copy, worker and merged batch shape
of the leaves met at load).
"""

from __future__ import annotations

import gc
import json
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from genserve import config, errors
from genserve.diffusion.settings import SERVING_FILE, ServiceSettings
from genserve.errors import InvalidInputError
from genserve.protocol import STREAM_SUFFIX, STREAMING_TASKS, TASKS
from genserve.schema import BYTES, Contract, Tensor
from genserve.triton import bls
from genserve.triton.model_config import model_parameters
from genserve.triton.requests import (
    count_failure,
    count_in_flight,
    failure,
    input_array,
    is_bls_call,
    output_tensors,
    refuse_if_draining,
)
from genserve.triton.workers import Replies, WorkerPool, backlog_full, process_alive

try:  # present only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None

# The host's own tensors, beside the tasks' (genserve.repository.diffusion writes them into its config).
MODEL_INPUT = "MODEL"  # BYTES [1]: the pipeline model the client called (plain or streaming)
CANCEL_INPUT = "CANCEL"  # BYTES [1]: the id of a request of the caller's to stop (nothing else is sent)
CALLER_INPUT = "CALLER"  # INT64 [1]: the calling process: a request whose caller died stops
BURST_INPUT = "BURST"  # INT32 [1]: run the request this many times at once (warm-up)
WORKER_OUTPUT = "WORKER"  # INT64 [1]: the host process that took the request (its first response)
ERROR_OUTPUT = "ERROR"  # BYTES [1]: JSON {"kind", "message"}: the request failed


def host_tensors() -> tuple[list[Tensor], list[Tensor]]:
    """The host's inputs (every task's, all optional, and its own) and outputs (every task's and its own)."""
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}
    for contract in STREAMING_TASKS.values():
        for tensor in contract.inputs:
            inputs.setdefault(tensor.name, replace(tensor, optional=True))
        for output in contract.outputs:
            outputs.setdefault(output.name, output.tensor)
    inputs[MODEL_INPUT] = Tensor(MODEL_INPUT, BYTES, (1,))
    inputs[CANCEL_INPUT] = Tensor(CANCEL_INPUT, BYTES, (1,), True)
    inputs[CALLER_INPUT] = Tensor(CALLER_INPUT, "int64", (1,), True)
    inputs[BURST_INPUT] = Tensor(BURST_INPUT, "int32", (1,), True)
    outputs[WORKER_OUTPUT] = Tensor(WORKER_OUTPUT, "int64", (1,))
    outputs[ERROR_OUTPUT] = Tensor(ERROR_OUTPUT, BYTES, (1,))
    return list(inputs.values()), list(outputs.values())


def error_payload(kind: errors.ErrorKind, message: str) -> np.ndarray:
    return np.array([json.dumps({"kind": kind.name, "message": message}).encode()], dtype=object)


def read_error(array: np.ndarray) -> tuple[errors.ErrorKind, str]:
    """The failure an ``ERROR`` output carries: its kind in the error table and its message."""
    payload = json.loads(bytes(array.reshape(-1)[0]))
    kind = next((kind for kind in errors.KINDS if kind.name == payload.get("kind")), errors.FAILED)
    return kind, str(payload.get("message", ""))


def text_value(array: np.ndarray | None) -> str:
    if array is None or array.size == 0:
        return ""
    value = array.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def int_value(array: np.ndarray | None, default: int) -> int:
    return default if array is None or array.size == 0 else int(array.reshape(-1)[0])


def _freeze_heap() -> None:
    """Leave what the process holds now (torch, diffusers, the pipelines: some 400k objects) out of Python's
    garbage collector: they live as long as the process, and a full collection walked them all with the GIL
    held, stalling every pipeline in the host (measured in the host: 50-210 ms each; none above 20 ms once
    frozen)."""
    gc.collect()
    gc.freeze()


class Hosted:
    """One pipeline model's service in the host: its settings now, the service when first needed, its
    workers (started now) and its backlog, which both twins share."""

    def __init__(self, name: str, folder: Path, settings: ServiceSettings, host_name: str):
        self.name, self.folder, self.settings = name, folder, settings
        self.workers = WorkerPool(settings.concurrency, f"{host_name}:{name}")
        # The diffusion models have no Triton queue bound (config.PIPELINE_WAITING), so it is kept here: as many
        # running as there are workers, PIPELINE_WAITING waiting.
        self.max_backlog = config.stream_backlog(settings.concurrency)
        self.backlog = 0
        self.lock = threading.Lock()
        self._service = None

    def admit(self, model: str) -> None:
        """Count one more request in, or refuse it at once (as a full queue does: the client may retry later
        or elsewhere)."""
        with self.lock:
            if self.backlog >= self.max_backlog:
                raise backlog_full(model, self.max_backlog)
            self.backlog += 1

    def release(self) -> None:
        with self.lock:
            self.backlog -= 1

    def service(self, text_reader):
        """The pipeline's service, built on first use (once, whichever worker comes first)."""
        with self.lock:
            if self._service is None:
                from genserve.diffusion.service import served_service

                self._service = served_service(
                    self.folder,
                    runner=lambda model, inputs, outputs: bls.infer(model, inputs, outputs, as_torch=True),
                    text_reader=text_reader,
                    concurrency=self.settings.concurrency,
                )
                _freeze_heap()
            return self._service


class PipelineHost:
    """The pipeline host model (see the module docstring)."""

    def initialize(self, args: dict[str, str]) -> None:
        self.model_config = json.loads(args["model_config"])
        self.model_name = args.get("model_name") or self.model_config.get("name", "?")
        self.parameters = model_parameters(self.model_config)
        version_dir = Path(args["model_repository"]) / args.get("model_version", "1")
        self.hosted: dict[str, Hosted] = {}
        for folder in sorted(path for path in version_dir.iterdir() if (path / SERVING_FILE).is_file()):
            self.hosted[folder.name] = Hosted(folder.name, folder, ServiceSettings.read(folder), self.model_name)
        self.running: set[str] = set()  # the ids of the requests taken and not answered
        self.cancelled: set[str] = set()  # those of them their callers gave up
        self.pid = os.getpid()
        # torch and diffusers now, once for every pipeline: the first request does not pay for the imports.
        import diffusers  # noqa: F401
        import torch  # noqa: F401

        import genserve.diffusion.service  # noqa: F401

        _freeze_heap()
        count_in_flight(self.model_name, 0)

    def execute(self, requests) -> None:
        # Every request gets its final response whatever happens to the others: one left without it is never
        # released, and the model then never unloads.
        for request in requests:
            sender = request.get_response_sender()
            replies = Replies(sender, self.model_name, int_value(input_array(request, CALLER_INPUT), 0))
            cancel = text_value(input_array(request, CANCEL_INPUT))
            if cancel:
                if cancel in self.running:  # one that ended meanwhile is not remembered
                    self.cancelled.add(cancel)
                replies.finish(None)
                continue
            # A pipeline model's call is counted in flight by that model, which waits for it: counted here only
            # when a client calls the host itself (each count is a round trip to tritonserver).
            counted = not is_bls_call(request)
            if counted:
                count_in_flight(self.model_name, 1)
            answered = self._answered if counted else None
            model = text_value(input_array(request, MODEL_INPUT))
            try:
                refuse_if_draining(request, self.model_name)
                hosted, contract = self._target(model)
                values = contract.decode_request(lambda name, request=request: input_array(request, name))
                hosted.admit(model)
            except Exception as error:  # noqa: BLE001 - this request fails alone
                self._fail(replies, error, model or self.model_name, answered)
                continue
            replies.send(pb_utils.InferenceResponse(output_tensors({WORKER_OUTPUT: self._worker})))
            call = Call(request, replies, model, contract.streaming, answered)
            self.running.add(call.id)
            burst = max(1, min(int_value(input_array(request, BURST_INPUT), 1), hosted.settings.concurrency))
            hosted.workers.submit(self._run, hosted, values, call, burst)
        return None

    @property
    def _worker(self) -> np.ndarray:
        return np.array([self.pid], dtype=np.int64)

    def _target(self, model: str) -> tuple[Hosted, Contract]:
        """The hosted pipeline a model name stands for (its plain or streaming twin) and that twin's contract."""
        plain = model.removesuffix(STREAM_SUFFIX)
        hosted = self.hosted.get(plain)
        if hosted is None:
            raise InvalidInputError(
                f"{self.model_name} runs no pipeline model {model!r}; it runs {', '.join(sorted(self.hosted))}"
            )
        task = hosted.settings.task
        return hosted, (STREAMING_TASKS[task] if model.endswith(STREAM_SUFFIX) else TASKS[task])

    def _run(self, hosted: Hosted, values: dict[str, Any], call: Call, burst: int) -> None:
        try:
            service = hosted.service(lambda image: self._read_text(hosted.settings.ocr_model, image))
            done = threading.Barrier(burst, timeout=config.CLIENT_TIMEOUT_S)
            # The others at once, on threads of their own: taken from the workers, two bursts (the twins' warm-ups)
            # could hold every worker waiting for their others, which then never start.
            for _ in range(burst - 1):
                threading.Thread(target=self._echo, args=(service, values, done), daemon=True).start()
            try:
                images, metadata = self._generate(service, values, call, hosted.settings.progress_interval_s)
            finally:
                _meet(done)
            outputs = call.contract_outputs(images=images, metadata=replace(metadata, model=call.model))
            response = pb_utils.InferenceResponse(output_tensors(outputs))
        except Exception as error:  # noqa: BLE001 - this request fails alone, the model keeps serving
            kind, message = failure(error, call.model)
            count_failure(self.model_name, kind.metric_label)
            response = pb_utils.InferenceResponse(output_tensors({ERROR_OUTPUT: error_payload(kind, message)}))
        finally:
            hosted.release()
            self.running.discard(call.id)
            self.cancelled.discard(call.id)
        call.replies.finish(response, after=call.answered)

    def _generate(self, service, values: dict[str, Any], call: Call, interval_s: float):
        def progress(report: dict[str, Any]) -> None:
            call.replies.send(pb_utils.InferenceResponse(output_tensors(call.contract_outputs(progress=report))))

        return service.generate(
            values,
            on_step=progress if call.streams else None,
            cancelled=lambda: self._cancelled(call),
            progress_interval_s=interval_s,
        )

    @staticmethod
    def _echo(service, values: dict[str, Any], done: threading.Barrier) -> None:
        """One more run of a warm-up request, its answer dropped."""
        try:
            service.generate(values)
        finally:
            _meet(done)

    def _cancelled(self, call: Call) -> bool:
        """Whether the request's caller gave up: its relay cancelled it or died, or (a direct caller) its
        client cancelled it."""
        caller = call.replies.caller
        if call.id in self.cancelled or (caller and not process_alive(caller)):
            return True
        return not call.bls and call.replies.sender.is_cancelled()

    @staticmethod
    def _read_text(ocr_model: str, image: bytes) -> list[str]:
        from genserve.protocol import OCR

        outputs = bls.infer(ocr_model, OCR.encode_request(image=image), OCR.output_names)
        return OCR.decode_response(outputs)["texts"]

    def _fail(self, replies: Replies, error: BaseException, model: str, answered) -> None:
        kind, message = failure(error, model)
        count_failure(self.model_name, kind.metric_label)
        response = pb_utils.InferenceResponse(output_tensors({ERROR_OUTPUT: error_payload(kind, message)}))
        replies.finish(response, after=answered)

    def _answered(self) -> None:
        count_in_flight(self.model_name, -1)

    def finalize(self) -> None:
        for hosted in self.hosted.values():
            hosted.workers.shutdown(timeout_s=config.DRAIN_TIMEOUT_S)
        self.hosted = {}


def _meet(barrier: threading.Barrier) -> None:
    try:
        barrier.wait()
    except threading.BrokenBarrierError:  # one of the burst failed or timed out: the others go on
        pass


class Call:
    """One request the host runs: its replies (its sender, its caller's process), the pipeline model it came for
    and whether that streams, its id (what a ``CANCEL`` names)."""

    def __init__(self, request, replies: Replies, model: str, streams: bool, answered):
        self.replies, self.model, self.streams = replies, model, streams
        self.answered = answered  # called once it is answered (None: nothing to do)
        self.id = request.request_id()
        self.bls = is_bls_call(request)

    def contract_outputs(self, **values: Any) -> dict[str, np.ndarray]:
        """Only the outputs given, encoded as the task contracts say: PROGRESS alone, or IMAGES and METADATA."""
        outputs = STREAMING_TASKS["t2i"].outputs  # every generation task's outputs, the same tensors
        return {output.name: output.encode(values[output.key]) for output in outputs if output.key in values}
