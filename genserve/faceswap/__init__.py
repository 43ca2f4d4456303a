"""Face swap (the deepfake task): dlib 68-point landmarks, one dense warp, colour matching, feathered blend."""

from genserve.faceswap.faces import Face, FaceAnalyzer, identity_similarity
from genserve.faceswap.swapper import FaceSwapper, SwapOptions, TargetFace

__all__ = ["Face", "FaceAnalyzer", "FaceSwapper", "SwapOptions", "TargetFace", "identity_similarity"]
