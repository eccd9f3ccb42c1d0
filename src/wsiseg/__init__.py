"""wsiseg: reproducible semantic segmentation of whole-slide images."""

import os

# OpenMP threads sleep between parallel regions instead of spinning (unless the user chose otherwise).
# wsiseg runs reader, blender and writer threads beside the model: spinning OpenMP workers took their
# cores and added to predict's CPU time (benchmarks/predict_bench.py; benchmarks/journal/predict.md).  Read when torch
# loads OpenMP, so it only applies when wsiseg is imported before torch (the CLI and Snakemake scripts).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from wsiseg import _legacy  # noqa: E402  (old flat module paths -> their subpackages)

_legacy.install()
