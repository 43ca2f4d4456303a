"""The diffusion tasks (t2i, tie, vttie) as in-process runtimes that know nothing of Triton: see
docs/diffusion-serving.md.

- :mod:`genserve.diffusion.service`: the tasks as one in-process object over a diffusers pipeline
  (request checks, the call, text-edit prompts and their OCR check, metadata);
- :mod:`genserve.diffusion.proxies`: stand-ins for the pipeline's heavy modules that call the exported
  models (over BLS when served);
- :mod:`genserve.diffusion.settings`: the pipeline models' parameters, read from their config.

The served pipeline models are :class:`genserve.triton.models.DiffusionModel`; ``genserve build-repo``
writes them (:mod:`genserve.repository.diffusion`).
"""
