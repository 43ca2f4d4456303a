"""genserve: a Triton/ONNX serving stack for image generation, image editing and face swap.

The distribution's parts:

- ``genserve.server``: starts the real Triton Inference Server on a model repository.
- ``genserve.faceswap``: the face swap (dlib landmarks + OpenCV), served by ``model_repository/face_swap``.
- ``genserve.client``: gRPC/HTTP client library for every task (top-level folder ``client/``).
- ``genserve.export``: diffusers pipelines to ONNX / TensorRT (top-level folder ``export/``).
- ``model_repository/``: the stack's Triton model repository, installed as data beside this package
  (``genserve.config.STACK_REPOSITORY_DIR``).
- ``genserve.benchmarks``: latency and throughput benchmarks (top-level folder ``benchmarks/``).
"""

__version__ = "0.1.0"
