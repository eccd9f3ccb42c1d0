#!/usr/bin/env bash
# The separate venv for benchmarks/peer_bench.py: wsiseg (editable, this checkout) beside TIAToolbox,
# in one interpreter with one torch.  Peers are never wsiseg dependencies.  Idempotent: rerun at will.
#
#   bash benchmarks/peers_setup.sh            # creates/updates benchmarks/.venv-peers
#   PYTHON=python3.11 bash benchmarks/peers_setup.sh
#
# TIAToolbox 2.1.3 pins torch<2.13 (and tight upper bounds on ~30 other packages) but runs on
# torch 2.14.1, so it is installed with --no-deps, followed by the packages it imports on the
# path SemanticSegmentor takes (found by importing it; no version caps, so torch is never
# downgraded).  pip prints a long "dependency conflicts" list for TIAToolbox's pins: expected.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=benchmarks/.venv-peers
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

"${PIP[@]}" torch==2.14.1 torchvision==0.29.1           # on this machine: from the local wheel store (CUDA build, CPU is used)
"${PIP[@]}" -e .                                        # wsiseg and its dependencies (segmentation-models-pytorch, zarr, openslide, ...)
"${PIP[@]}" --no-deps tiatoolbox==2.1.3
# what tiatoolbox imports (at import or run time) beyond wsiseg's dependencies:
"${PIP[@]}" dask umap-learn SimpleITK defusedxml transformers

"$VENV/bin/python" - <<'EOF'
import torch
from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor  # noqa: F401
import tiatoolbox, wsiseg
assert torch.__version__.startswith("2.14.1"), torch.__version__
print(f"peers venv ready: torch {torch.__version__}, tiatoolbox {tiatoolbox.__version__}, wsiseg from {wsiseg.__file__}")
EOF
