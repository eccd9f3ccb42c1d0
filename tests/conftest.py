"""Shared fixtures: tiny synthetic slides made on the fly (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsiseg.demo import DemoSpec, generate_demo

ROOT = Path(__file__).resolve().parents[1]
TINY = DemoSpec(slides=3, height=384, width=512, radius_min=30, radius_max=50, seed=7)


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
