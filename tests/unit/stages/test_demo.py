import hashlib
import json

import numpy as np
import pandas as pd
import tifffile
from support.workflow import TINY

from wsiseg import rle
from wsiseg.demo import generate_demo


def _digest(folder):
    data = {p.name: p.read_bytes().replace(str(folder).encode(), b"DIR") for p in sorted(folder.iterdir())}
    return {name: hashlib.sha256(blob).hexdigest() for name, blob in data.items()}


def test_same_seed_gives_byte_identical_files(tiny_demo, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    generate_demo(again, TINY)
    assert _digest(again) == _digest(tiny_demo)
    generate_demo(other, TINY.__class__(**{**TINY.__dict__, "seed": TINY.seed + 1}))
    assert _digest(other)["demo_0.tiff"] != _digest(again)["demo_0.tiff"]


def test_demo_layout_and_annotation_formats(tiny_demo):
    samples = pd.read_csv(tiny_demo / "samples.csv", keep_default_na=False)
    assert list(samples.columns) == ["slide_id", "image", "mask", "split"]
    assert samples["split"].tolist() == ["train", "val", "test"]
    with tifffile.TiffFile(tiny_demo / "demo_0.tiff") as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.compression.name == "JPEG"
        assert len(tif.series[0].levels) >= 2  # pyramid
        assert tif.series[0].shape == (384, 512, 3)
    table = pd.read_csv(tiny_demo / "train.csv")
    assert list(table.columns) == ["id", "encoding"] and set(table["id"]) == {"demo_0", "demo_2"}
    mask = rle.decode(table.set_index("id").loc["demo_0", "encoding"], (384, 512))
    assert 0.005 < mask.mean() < 0.5  # glomeruli present, not everywhere
    features = json.loads((tiny_demo / "demo_1.json").read_text())
    assert features and features[0]["geometry"]["type"] == "Polygon"


def test_glomeruli_are_darker_than_surrounding_tissue(tiny_demo):
    image = tifffile.imread(tiny_demo / "demo_0.tiff").astype(float)
    mask = rle.decode(
        pd.read_csv(tiny_demo / "train.csv").set_index("id").loc["demo_0", "encoding"], (384, 512)
    ).astype(bool)
    assert image[mask].mean() < image[~mask].mean() - 20
    assert np.isfinite(image).all()
