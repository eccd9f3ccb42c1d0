"""Shared fixtures: tiny synthetic slides made on the fly (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsiseg.demo import DemoSpec, generate_demo

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"


def write_config(workdir: Path, config: dict | str) -> Path:
    """Write a run's ``config/config.yaml`` (where workflow/Snakefile looks) in ``workdir``."""
    import yaml

    path = Path(workdir) / "config" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


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


def write_prediction(path: Path, mask: np.ndarray, chunk: int = 16) -> Path:
    """A prediction store holding ``mask`` (probability = mask x 255), in predict's OME-NGFF layout
    (:mod:`wsiseg.store.prediction`): probability image at the root, ``labels/mask`` (y, x)."""
    import zarr

    from wsiseg.modelcard import label_names
    from wsiseg.store.prediction import image_attrs, label_attrs
    from wsiseg.store.slide import build_pyramid, compressor, create_level, level_count

    root = zarr.open_group(path, mode="w", zarr_format=2)
    levels = level_count(*mask.shape, chunk)
    group = root.create_group("labels").create_group("mask")
    create_level(group, "0", mask.shape, chunk, compressor())[:] = mask.astype(np.uint8)
    classes = int(mask.max()) + 1 if mask.max() > 1 else 1  # label values > 1: multi-class, a channel per class
    onehot = (mask > 0)[None] if classes == 1 else mask[None] == np.arange(classes)[:, None, None]
    create_level(root, "0", onehot.shape, chunk, compressor())[:] = onehot.astype(np.uint8) * 255
    build_pyramid(group, levels, chunk, compressor(), "max")
    build_pyramid(root, levels, chunk, compressor(), "mean")
    root["labels"].attrs["labels"] = ["mask"]
    names = label_names(classes)
    group.attrs.update(label_attrs(levels, names))
    root.attrs.update(
        {
            **image_attrs(path.stem, levels, names[1:] if classes == 1 else names),
            "slide_id": path.stem,
            "classes": classes,
        }
    )
    return path


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
