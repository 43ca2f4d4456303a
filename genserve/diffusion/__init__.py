"""Serving the diffusion pipelines (t2i, tie, vttie) through Triton: see docs/diffusion-serving.md.

- :mod:`genserve.diffusion.repository`: ``genserve build-repo``, an export to leaf and pipeline models;
- :mod:`genserve.diffusion.serving`: the pipeline models (diffusers pipelines over BLS);
- :mod:`genserve.diffusion.proxies`: the stand-ins for the heavy modules;
- :mod:`genserve.demo.repository`: tiny pipelines -> export -> repository -> images.
"""
