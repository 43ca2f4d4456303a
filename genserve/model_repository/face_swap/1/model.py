"""Triton Python-backend model ``face_swap``: see ../config.pbtxt for its tensors."""

import json

from genserve.faceswap import FaceSwapper, SwapOptions
from genserve.triton.requests import bytes_input, bytes_tensor, respond_each


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        cache_size = int(parameters.get("target_cache_size", {}).get("string_value", "64"))
        # Load dlib's models now, so the first request does not pay for it.
        self.swapper = FaceSwapper(target_cache_size=cache_size).load()

    def execute(self, requests):
        return respond_each(requests, self._swap, "face_swap")

    def _swap(self, request):
        options = SwapOptions.from_json(bytes_input(request, "OPTIONS", required=False))
        image, metadata = self.swapper.swap(
            bytes_input(request, "ORI_IMAGE"), bytes_input(request, "TARGET_IMAGE"), options
        )
        return [bytes_tensor("IMAGE", image), bytes_tensor("METADATA", json.dumps(metadata))]
