"""The Triton adapters: everything that touches Triton's Python backend, in one place, over the
runtimes below (:mod:`genserve.faceswap`, :mod:`genserve.ocr`, :mod:`genserve.diffusion`,
:mod:`genserve.onnx_sessions`), which know nothing of Triton.

- :mod:`genserve.triton.models`: the stack's Python-backend models (face swap, OCR, diffusion
  pipelines), each a task's contract (:mod:`genserve.protocol`) over its in-process service.
- :mod:`genserve.triton.onnx_leaf`: a model that runs one ONNX file with ONNX Runtime ("ONNX leaf
  model"), for servers without the native onnxruntime backend; :mod:`genserve.triton.face_embedding`
  is one over the converted face-recognition network.
- :mod:`genserve.triton.bls`: calls from one served model to another, error codes kept.
- :mod:`genserve.triton.requests`: reading requests, answering each one on its own.
- :mod:`genserve.triton.model_config`: ``config.pbtxt`` as Triton's ``ModelConfig``, model parameters.
- :mod:`genserve.triton.served_config`: a model folder's config as Triton serves it (auto-completed).

The server process itself is started by :mod:`genserve.server`.
"""
