"""Repository writers: build-time code that turns an export into Triton model folders.

- :mod:`genserve.repository.diffusion`: ``genserve build-repo``, an export to leaf and pipeline models.
- :mod:`genserve.repository.native`: leaf models rewritten for the NGC container's native onnxruntime backend.

Nothing that runs inside Triton imports these (tests/test_layers.py).
"""
