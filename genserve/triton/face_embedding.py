"""``model_repository/face_embedding``: the ONNX leaf model over the face-recognition network that
:mod:`genserve.faceswap.embedding_graph` converts from dlib's weights."""

from __future__ import annotations

from pathlib import Path

from genserve.faceswap.embedding_graph import onnx_file
from genserve.onnx_sessions import DEFAULT_FILE_NAME
from genserve.triton.onnx_leaf import TritonPythonModel as OnnxLeafModel


class FaceEmbeddingLeaf(OnnxLeafModel):
    """The ONNX leaf model over the converted file (``<model>/1/model.onnx`` still wins, as for any leaf:
    the NGC container serves that one natively)."""

    def find_onnx_file(self, model_dir: str, version: str, parameters: dict[str, str]) -> Path:
        default = Path(model_dir) / str(version) / DEFAULT_FILE_NAME
        return default if default.is_file() else onnx_file()
