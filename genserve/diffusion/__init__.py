"""The diffusion tasks (t2i, tie, vttie) through Triton: see docs/diffusion-serving.md.

- :mod:`genserve.diffusion.service`: the tasks as one in-process object over a diffusers pipeline
  (request checks, the call, text-edit prompts and their OCR check, metadata);
- :mod:`genserve.diffusion.proxies`: stand-ins for the pipeline's heavy modules that call the exported
  models (over BLS when served);
- :mod:`genserve.diffusion.repository`: ``genserve build-repo``, an export to leaf and pipeline models.

The served pipeline models are :class:`genserve.triton.models.DiffusionModel`.
"""
