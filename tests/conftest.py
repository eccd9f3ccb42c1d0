"""Shared fixtures: tiny synthetic slides made on the fly (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from support.stores import write_prediction  # noqa: F401  (re-exported for older imports)
from support.workflow import SNAKEFILE, TINY, write_config  # noqa: F401

from wsiseg.demo import generate_demo


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A 3-slide demo set of 384x512 slides."""
    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, TINY)
    return out


@pytest.fixture
def rgb_tiff(tmp_path) -> tuple[Path, np.ndarray]:
    """A small random RGB tiled TIFF and its pixels."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(300, 420, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(64, 64), compression="zlib", photometric="rgb")
    return path, image


@pytest.fixture(scope="session")
def tiny_trained(tiny_demo, tmp_path_factory) -> tuple[dict[str, Path], Path]:
    """Converted tiny demo slides and a checkpoint trained for one epoch on them."""
    import pandas as pd

    from wsiseg.convert import convert_slide
    from wsiseg.patches import PatchParams, extract_patches
    from wsiseg.train import TrainParams, train_model

    work = tmp_path_factory.mktemp("trained")
    slides = {}
    for row in pd.read_csv(tiny_demo / "samples.csv").itertuples():
        slides[row.slide_id] = convert_slide(
            row.image, work / f"{row.slide_id}.zarr", mask=row.mask, slide_id=row.slide_id, chunk=128
        )
    patches = PatchParams(size=64, downscale=2, stride=32, min_coverage=0.05)
    for slide_id in ("demo_0", "demo_1"):
        extract_patches(slides[slide_id], work / f"p_{slide_id}.zarr", work / f"p_{slide_id}.csv", patches)
    params = TrainParams(
        encoder_depth=3, decoder_channels=(32, 16, 8), batch_size=8, epochs=2, lr=3e-3, accelerator="cpu"
    )
    train_model([work / "p_demo_0.zarr"], [work / "p_demo_1.zarr"], work / "model", params, threads=2)
    return slides, work / "model" / "model.ckpt"
