"""What the demo and the tests build on this machine, where no real weights can be downloaded.

Nothing under serving imports this package: it stands in for what a user brings (a checkpoint folder,
photos, a sign to edit).

- :mod:`genserve.demo.contest`: ``genserve demo``, all four contest tasks through the real server.
- :mod:`genserve.demo.pipelines`: tiny and medium random-weight diffusers pipelines of each family.
- :mod:`genserve.demo.tokenizers`: their tokenizers, trained offline.
- :mod:`genserve.demo.repository`: those pipelines exported and built into one served repository.
- :mod:`genserve.demo.samples`: images with rendered text (OCR tests, the text-edit demo).
- ``data/faces``: two of dlib's example photos (Boost Software License).
"""

from pathlib import Path

FACES_DIR = Path(__file__).resolve().parent / "data" / "faces"
