from genserve.triton.face_embedding import FaceEmbeddingLeaf as TritonPythonModel  # noqa: F401  (an ONNX leaf: see config.pbtxt)
