"""The pipeline models clients call (``text_to_image``, ``edit_image``, ``edit_text`` and their ``_stream``
twins): light relays to the pipeline host (:mod:`genserve.triton.pipeline_host`), which runs the
diffusers pipelines of the whole repository in one process.

A relay's process imports numpy and the stack's contracts, no torch: the twins of every task share the
host's pipelines instead of each holding torch, diffusers and a copy of the pipeline (docs/diffusion-serving.md,
"One process for the pipelines"). Per request it forwards the client's tensors to the host over BLS (with
its own name, so that the host runs the right task and reports it), and sends back what the host answers:
the streaming twin every ``PROGRESS`` and then the result, the plain twin the result alone, through the
request's response sender (Triton 24.07+ allows that for plain models too), so that neither holds its
instance: each request waits on a worker thread of its own, and concurrent requests reach the host, and
their denoiser calls the leaf's batcher, together. A model takes as many requests as the pipeline's backlog
(its workers plus ``config.PIPELINE_WAITING``); the next is refused at once with UNAVAILABLE, as the host refuses
what both twins together send beyond it.

What the relay watches meanwhile (:meth:`DiffusionModel._watch`, every ``config.RELAY_WATCH_S``): a request
whose client gave up (cancelled, or its deadline passed) is cancelled at the host, which stops it between
two denoising steps; one whose host process died (Triton 2.51 never answers a decoupled model's requests
on a dead worker) is answered UNAVAILABLE, which clients retry: the watchdog loads a fresh host meanwhile.

At load, the model's warm-up requests (Triton's ``model_warmup``) are run by the host as many times at
once as the pipeline runs requests at once: threads, pipeline copies and the leaves' merged batch shapes
are paid for before the model reports ready, not by the first burst of clients.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from genserve import config, errors
from genserve.config import RESPONSE_CACHE_ENV
from genserve.diffusion.settings import ServiceSettings
from genserve.errors import InvalidInputError, Unavailable
from genserve.protocol import STREAMING_TASKS, TASKS
from genserve.schema import Contract
from genserve.triton.model_config import model_parameters
from genserve.triton.pipeline_host import (
    BURST_INPUT,
    CALLER_INPUT,
    CANCEL_INPUT,
    ERROR_OUTPUT,
    MODEL_INPUT,
    WORKER_OUTPUT,
    read_error,
)
from genserve.triton.requests import (
    count_in_flight,
    error_response,
    error_response_of,
    refuse_if_draining,
    triton_code_name,
)
from genserve.triton.workers import WorkerPool, backlog_full, finish, process_alive

try:  # present only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None


class Relay:
    """One client request on its way through the host."""

    def __init__(self, sender):
        self.sender = sender
        # Held while anything uses the sender: once the final response is sent, the request's response factory is
        # gone, and asking it whether the client cancelled crashed tritonserver (Triton 2.51).
        self.lock = threading.Lock()
        self.id = uuid.uuid4().hex
        self.started = time.monotonic()
        self.worker: int | None = None  # the host process that took it
        self.cancel_sent = False
        self.ended = False


class DiffusionModel:
    """``text_to_image``, ``edit_image`` or ``edit_text`` over one export, as ``1/serving.json`` says (its
    task, the pipeline host, how many requests run at once): see the module docstring."""

    streams = False  # a progress response after every step (the decoupled twin below)

    @classmethod
    def task_contract(cls, task: str) -> Contract:
        """The contract the model serves for ``task`` (genserve.triton.served_config reads it too)."""
        return (STREAMING_TASKS if cls.streams else TASKS)[task]

    def initialize(self, args: dict[str, str]) -> None:
        self.model_config = json.loads(args["model_config"])
        self.model_name = args.get("model_name") or self.model_config.get("name", "?")
        self.parameters = model_parameters(self.model_config)
        settings = ServiceSettings.read(Path(args["model_repository"]) / args.get("model_version", "1"))
        self.contract: Contract = self.task_contract(settings.task)
        self.host = settings.host
        self.input_names = [tensor.name for tensor in self.contract.inputs]
        self.output_names = [WORKER_OUTPUT, ERROR_OUTPUT, *self.contract.output_names]
        # Cached responses are keyed by the inputs alone (Triton's response cache).
        self.caching = bool(self.model_config.get("response_cache", {}).get("enable")) and bool(
            os.environ.get(RESPONSE_CACHE_ENV)
        )
        self.burst = settings.concurrency
        self.warmups_left = sum(max(1, int(w.get("count") or 0)) for w in self.model_config.get("model_warmup", []))
        # As many requests in flight as the host takes for this pipeline (running and waiting): each waits on a
        # thread of its own, started now.
        self.max_backlog = config.stream_backlog(settings.concurrency)
        self.workers = WorkerPool(self.max_backlog, self.model_name)
        self.relays: dict[str, Relay] = {}
        self.host_pids: set[int] = set()
        self.lock = threading.Lock()
        self.closing = threading.Event()
        threading.Thread(target=self._watch, name=f"{self.model_name}-watch", daemon=True).start()
        count_in_flight(self.model_name, 0)

    # --- taking requests ---------------------------------------------------------------------------------

    def execute(self, requests) -> None:
        for request in requests:
            sender = request.get_response_sender()
            count_in_flight(self.model_name, 1)
            try:
                refuse_if_draining(request, self.model_name)
                inputs = self._inputs(request)
            except Exception as error:  # noqa: BLE001 - this request fails alone
                finish(sender, error_response(error, self.model_name), self.model_name)
                count_in_flight(self.model_name, -1)
                continue
            relay = Relay(sender)
            burst = 1
            if self.warmups_left > 0:  # Triton's model_warmup: run before the model is available to clients
                self.warmups_left -= 1
                burst = self.burst
            with self.lock:
                # As many as it has threads, each forwarded at once: one more would wait here, unseen by the host,
                # which refuses what its pipeline cannot take (both twins' requests together).
                admitted = len(self.relays) < self.max_backlog
                if admitted:
                    self.relays[relay.id] = relay
            if not admitted:
                refusal = backlog_full(self.model_name, self.max_backlog)
                finish(sender, error_response(refusal, self.model_name), self.model_name)
                count_in_flight(self.model_name, -1)
                continue
            self.workers.submit(self._forward, relay, inputs, burst)
        return None

    def _inputs(self, request) -> list:
        """The request's tensors as the host takes them: the client's, the model's name and this process."""
        # Copies: a request's own tensors handed on in a BLS request crashed tritonserver (a warm-up's, Triton 2.51).
        tensors = [
            pb_utils.Tensor(name, tensor.as_numpy())
            for name in self.input_names
            if (tensor := pb_utils.get_input_tensor_by_name(request, name)) is not None
        ]
        names = {tensor.name() for tensor in tensors}
        if self.caching and "SEED" not in names:
            raise InvalidInputError(
                "SEED is missing: this server answers repeated requests from its response cache, so a request "
                "without a seed would get an earlier one's image; send a seed (genserve's clients draw one)"
            )
        return [
            *tensors,
            pb_utils.Tensor(MODEL_INPUT, np.array([self.model_name.encode()], dtype=object)),
            pb_utils.Tensor(CALLER_INPUT, np.array([os.getpid()], dtype=np.int64)),
        ]

    # --- the way through the host --------------------------------------------------------------------------

    def _forward(self, relay: Relay, inputs: list, burst: int) -> None:
        if burst > 1:
            inputs = [*inputs, pb_utils.Tensor(BURST_INPUT, np.array([burst], dtype=np.int32))]
        request = pb_utils.InferenceRequest(
            model_name=self.host,
            requested_output_names=self.output_names,
            inputs=inputs,
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
            request_id=f"{config.BLS_REQUEST_ID}:{relay.id}",  # its calls run while the server drains
        )
        try:
            # Read to its end (the host's final response closes it), whatever came first: an iterator left
            # before its end keeps the host's request, and the host then never unloads.
            for response in request.exec(decoupled=True):
                if not relay.ended:
                    self._relayed(relay, response)
        except Exception as error:  # noqa: BLE001 - the host could not be reached: this request fails alone
            self._end(relay, error_response(Unavailable(f"{self.host} is unavailable: {error}"), self.model_name))
        self._end(
            relay,
            error_response(Unavailable(f"{self.host} closed the request without an answer"), self.model_name),
        )

    def _relayed(self, relay: Relay, response) -> bool:
        """Pass one of the host's responses on; whether it was the last."""
        if response.has_error():  # the host itself did not take it (its worker dead or reloading, its queue full)
            error = response.error()
            kind, message = errors.decode(triton_code_name(error.code()), error.message())
            message = f"{self.host}: {message}"
            if kind in (errors.RESTARTING, errors.RELOADING):  # a fresh host loads: retried until the deadline,
                kind, message = errors.UNAVAILABLE, errors.REPLACING.marked(message)  # streamed calls too (marker)
            elif kind.triton_code is None:
                kind = errors.UNAVAILABLE if kind.retriable else errors.FAILED
            self._end(relay, error_response_of(kind, kind.marked(message), self.model_name))
            return True
        tensors = {name: pb_utils.get_output_tensor_by_name(response, name) for name in self.output_names}
        if tensors[WORKER_OUTPUT] is not None:
            relay.worker = int(tensors[WORKER_OUTPUT].as_numpy().reshape(-1)[0])
            with self.lock:
                self.host_pids = {pid for pid in self.host_pids if process_alive(pid)} | {relay.worker}
        if tensors[ERROR_OUTPUT] is not None:
            kind, message = read_error(tensors[ERROR_OUTPUT].as_numpy())
            self._end(relay, error_response_of(kind, message, self.model_name))
            return True
        result = [tensors[name] for name in self.contract.output_names if name != "PROGRESS"]
        if all(tensor is not None for tensor in result):
            self._end(relay, pb_utils.InferenceResponse(output_tensors=result))
            return True
        if self.streams and tensors.get("PROGRESS") is not None:
            with relay.lock:
                if not relay.ended:
                    relay.sender.send(pb_utils.InferenceResponse(output_tensors=[tensors["PROGRESS"]]))
        return False

    def _end(self, relay: Relay, response) -> bool:
        """The request's last response, once (the watcher may answer it first); whether this call sent it."""
        with relay.lock:
            if relay.ended:
                return False
            relay.ended = True
            finish(relay.sender, response, self.model_name)
        with self.lock:
            self.relays.pop(relay.id, None)
        count_in_flight(self.model_name, -1)
        return True

    # --- what the watcher sees -------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Every RELAY_WATCH_S: cancel at the host the requests whose clients gave up, and answer those whose host
        process died (see the module docstring)."""
        while not self.closing.wait(config.RELAY_WATCH_S):
            with self.lock:
                relays = list(self.relays.values())
                live = {pid for pid in self.host_pids if process_alive(pid)}
                # Every host process it knew of died (none known yet, at load, is no death).
                hosts_died = bool(self.host_pids) and not live
                self.host_pids = live or self.host_pids
            for relay in relays:
                self._check(relay, hosts_died)

    def _check(self, relay: Relay, hosts_died: bool) -> None:
        worker = relay.worker  # set by the request's thread meanwhile, perhaps
        if worker is not None:
            lost = not process_alive(worker)
        else:  # not taken yet: lost if the hosts it could reach are dead (a fresh one takes the next ones)
            lost = hosts_died and time.monotonic() - relay.started > config.RELAY_ACCEPT_S
        if lost:
            # UNAVAILABLE, marked as a replaced worker's: clients retry it until their deadline (a fresh host loads).
            message = errors.REPLACING.marked(
                f"the worker process of {self.host} died while it ran this request; a fresh one is loading"
            )
            if self._end(relay, error_response_of(errors.UNAVAILABLE, message, self.model_name)):
                self.workers.replace()  # its thread waits for good for an answer Triton never sends
            return
        with relay.lock:  # not once answered (see Relay.lock)
            try:
                cancelled = not relay.ended and not relay.cancel_sent and relay.sender.is_cancelled()
            except Exception:  # noqa: BLE001 - answered meanwhile: its sender is closed
                return
        if cancelled:
            relay.cancel_sent = True
            threading.Thread(target=self._cancel, args=(relay,), daemon=True).start()

    def _cancel(self, relay: Relay) -> None:
        """Tell the host to stop a request whose client gave up (it then ends CANCELLED)."""
        request = pb_utils.InferenceRequest(
            model_name=self.host,
            requested_output_names=[ERROR_OUTPUT],
            inputs=[
                pb_utils.Tensor(MODEL_INPUT, np.array([self.model_name.encode()], dtype=object)),
                pb_utils.Tensor(CANCEL_INPUT, np.array([f"{config.BLS_REQUEST_ID}:{relay.id}".encode()], dtype=object)),
            ],
            request_id=config.BLS_REQUEST_ID,
        )
        try:
            for _ in request.exec(decoupled=True):
                pass
        except Exception:  # noqa: BLE001 - the host is gone or busy: the request ends either way
            pass

    def finalize(self) -> None:
        self.workers.shutdown(timeout_s=config.DRAIN_TIMEOUT_S)
        self.closing.set()


class DiffusionStreamModel(DiffusionModel):
    """The streaming (decoupled) twin, ``<task model>_stream``: a progress response after every denoising
    step, then the result."""

    streams = True
