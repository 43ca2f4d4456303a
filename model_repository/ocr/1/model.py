from genserve.triton.models import OcrModel as TritonPythonModel  # noqa: F401  (tensors: genserve.protocol.OCR)
