"""The front: a proxy on the public gRPC and HTTP ports that forwards Triton's APIs to tritonserver.

Two things Triton 2.51 cannot be told are done here, before and after it:

- **A byte limit on requests.** Triton takes gRPC messages up to ``INT32_MAX`` bytes and HTTP bodies of
  any size, so an oversized request crossed into tritonserver (and a worker's shared memory) before a
  model refused it. The front refuses a request above :data:`genserve.config.MAX_REQUEST_BYTES` (gRPC
  ``RESOURCE_EXHAUSTED``, HTTP 413, the message naming the limit) from its declared length; Triton
  never gets it.
- **A retriable code for a dead worker.** A request in flight on a Python-backend worker that died fails
  with ``INTERNAL`` (HTTP 500) ``"Stub process '...' is not healthy."``, a code the backend hard-codes,
  which a plain client does not retry. The front answers it ``UNAVAILABLE`` (503), the details kept,
  which any client retries; nothing else is rewritten.

- **What Triton would choke on, and what cannot be valid** (issue 30): a body whose JSON nests deeper than
  :data:`genserve.config.MAX_JSON_DEPTH` (Triton's recursive parser died of SIGSEGV; :mod:`.scan`), a gRPC
  message that does not parse, an input declared larger than its model takes (:mod:`.inspection`), and large
  requests beyond a few at once (:mod:`.state`).
- **The server's life** (:mod:`.state`): not ready until every model is loaded and once it stops, new
  inference refused while it drains, and what a stopping Triton cuts short answered UNAVAILABLE.

Everything else passes as it is (:mod:`.grpc_proxy`, :mod:`.http_proxy`). On the HTTP port the front also
answers the OpenAI Images API under ``/v1`` (:mod:`.openai_api`), translated to the tasks' Triton requests.

It runs as its own process (``python -m genserve.front``, started by :class:`genserve.server.TritonServer`
through :mod:`.process`), so that its event loop never competes for the GIL with a caller's threads; one
asyncio loop serves both protocols. On SIGTERM or SIGINT it keeps forwarding until tritonserver
(``--upstream-pid``) has exited, so that a draining Triton still answers through it.
"""
