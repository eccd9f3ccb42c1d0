"""wsiseg: reproducible semantic segmentation of whole-slide images."""

import os

# OpenMP threads sleep between parallel regions instead of spinning (unless the user chose otherwise).
# wsiseg runs reader, blender and writer threads beside the model: spinning OpenMP workers took their
# cores (measured on 2 cores: predict's CPU time 3.5 s -> 2.5 s on an 8192² slide).  Read when torch
# loads OpenMP, so it only applies when wsiseg is imported before torch (the CLI and Snakemake scripts).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from wsiseg import _legacy  # noqa: E402  (old flat module paths -> their subpackages)

_legacy.install()
