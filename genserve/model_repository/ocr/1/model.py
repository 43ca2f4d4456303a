from genserve.ocr.serving import TritonPythonModel  # noqa: F401
