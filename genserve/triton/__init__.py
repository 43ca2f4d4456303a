"""Reusable pieces for Triton models of the stack.

- :mod:`genserve.triton.onnx_leaf`: a generic Python-backend model that runs one ONNX file with ONNX
  Runtime ("ONNX leaf model"), for hosts whose Triton has no native onnxruntime backend.
"""
