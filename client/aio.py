"""The asyncio client: the same task methods as :class:`~genserve.client.Client`, awaited, over gRPC.

    async with AsyncClient("localhost:8001") as client:
        results = await asyncio.gather(*(client.swap_face(ori, t) for t in targets))

Many requests in flight from one event loop, without a thread each: what a web front end or an
asyncio batch job wants. Built on ``tritonclient.grpc.aio``; deadlines, retries and targets that
resolve to several servers work as in :class:`~genserve.client.Client`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genserve import config, errors
from genserve.client import retry
from genserve.client.client import Call, RequestError, TaskMethods, is_final, request_error, triton_inputs, unavailable


class AsyncClient(TaskMethods):
    def __init__(
        self,
        url: str | None = None,
        *,
        timeout_s: float | None = config.CLIENT_TIMEOUT_S,
        retry_policy: retry.RetryPolicy | None = None,
    ):
        import tritonclient.grpc.aio as triton

        self.protocol = "grpc"
        self.url = url or config.grpc_url()
        self.timeout_s = timeout_s
        self.retry_policy = retry_policy or retry.RetryPolicy()
        self._triton = triton
        self._client = triton.InferenceServerClient(self.url, channel_args=retry.grpc_channel_args(self.retry_policy))

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def is_ready(self, model: str | None = None) -> bool:
        try:
            return await (self._client.is_model_ready(model) if model else self._client.is_server_ready())
        except Exception:  # noqa: BLE001 - connection refused, a server that cannot say: not ready
            return False

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return await self._retrying(lambda deadline: self._infer_once(model, inputs, outputs, deadline))

    async def _retrying(self, attempt_once) -> dict[str, np.ndarray]:
        return await self.retry_policy.call_async(
            lambda _, deadline: attempt_once(deadline),
            self.timeout_s,
            other_replica=retry.several_servers(self.protocol, self.url),
        )

    async def _infer_once(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], deadline: float | None
    ) -> dict[str, np.ndarray]:
        from tritonclient.utils import InferenceServerException

        requested = [self._triton.InferRequestedOutput(name) for name in outputs]
        remaining = retry.remaining_s(deadline)
        timeouts = {} if remaining is None else {"timeout": int(remaining * 1e6), "client_timeout": remaining}
        try:
            result = await self._client.infer(model, triton_inputs(self._triton, inputs), outputs=requested, **timeouts)
        except InferenceServerException as error:
            raise request_error(error, self.url, self.protocol) from None
        except (ConnectionError, OSError) as error:
            raise unavailable(self.url, self.protocol, error) from None
        return {name: result.as_numpy(name) for name in outputs}

    async def stream_infer(self, model: str, inputs: dict[str, np.ndarray], on_progress) -> dict[str, np.ndarray]:
        """One request to a streaming model; ``on_progress`` gets every response before the result.
        Retried as a unary request is."""
        return await self._retrying(lambda deadline: self._stream_once(model, inputs, on_progress, deadline))

    async def _stream_once(
        self, model: str, inputs: dict[str, np.ndarray], on_progress, deadline
    ) -> dict[str, np.ndarray]:
        from tritonclient.utils import InferenceServerException

        async def requests():
            yield {"model_name": model, "inputs": triton_inputs(self._triton, inputs)}

        stream = self._client.stream_infer(requests(), stream_timeout=retry.remaining_s(deadline))
        try:
            async for result, error in stream:
                if error is not None:
                    raise request_error(error, self.url, self.protocol)
                arrays = {output.name: result.as_numpy(output.name) for output in result.get_response().outputs}
                if is_final(arrays):
                    return arrays
                on_progress(arrays)
        except InferenceServerException as error:
            raise request_error(error, self.url, self.protocol) from None
        finally:
            stream.cancel()  # the result is in, or this side gave up: the server stops either way
        raise RequestError(f"{model} closed the stream without a result", errors.UNAVAILABLE)

    async def _run(self, call: Call) -> Any:
        if call.on_progress is not None:
            return call.parse(await self.stream_infer(call.model, call.inputs, call.on_progress))
        return call.parse(await self.infer(call.model, call.inputs, call.outputs))
