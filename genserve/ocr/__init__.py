"""OCR for the stack: PP-OCRv4 (rapidocr's ONNX weights) served by Triton, and text-edit checks.

- :mod:`genserve.ocr.engine`: rapidocr's pipeline with its ONNX calls redirected (in-process or to Triton).
- served as the ``ocr`` model by :class:`genserve.triton.models.OcrModel` (BLS to ``ocr_det``, ``ocr_cls``,
  ``ocr_rec``; its tensors: :data:`genserve.protocol.OCR`).
- :mod:`genserve.ocr.textedit`: old/new text of an edit instruction, normalized edit distance.
"""
