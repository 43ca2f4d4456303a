from genserve.triton.ocr_steps import UprightStep as TritonPythonModel  # noqa: F401  (a step of ocr_ensemble, see its config.pbtxt)
