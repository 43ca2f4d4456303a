from genserve.triton.onnx_leaf import TritonPythonModel  # noqa: F401  (tensors: the ONNX graph's own, see config.pbtxt)
