from genserve.triton.models import FaceSwapModel as TritonPythonModel  # noqa: F401  (tensors: genserve.protocol.FACE_SWAP)
