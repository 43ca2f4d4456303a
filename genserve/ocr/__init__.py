"""OCR for the stack: PP-OCRv4 (rapidocr's ONNX weights) served by Triton, and text-edit checks.

- :mod:`genserve.ocr.engine`: rapidocr's pipeline with its ONNX calls redirected (in-process or to Triton).
- :mod:`genserve.ocr.serving`: the served ``ocr`` model (BLS to ``ocr_det``, ``ocr_cls``, ``ocr_rec``).
- :mod:`genserve.ocr.textedit`: old/new text of an edit instruction, normalized edit distance.
- :mod:`genserve.demo.samples`: images with rendered English and Chinese text (tests, benchmark).
"""
