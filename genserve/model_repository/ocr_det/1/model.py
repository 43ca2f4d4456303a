from genserve.triton.onnx_leaf import TritonPythonModel  # noqa: F401
