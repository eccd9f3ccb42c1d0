import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from wsiseg.convert import convert_slide
from wsiseg.patches import PatchParams, extract_patches, grid_positions, select_patches

CELL = 32
# foreground rows per 32x32 cell of a 4x4 grid: coverage = rows / 32
ROWS = np.array(
    [
        [0, 2, 16, 32],
        [8, 0, 0, 24],
        [0, 28, 4, 0],
        [0, 0, 0, 0],
    ]
)
COVERAGE = ROWS / CELL
WHITE = {(3, 0), (3, 1), (3, 2), (3, 3)}  # cells without tissue


@pytest.fixture
def known_slide(tmp_path):
    image = np.full((4 * CELL, 4 * CELL, 3), (230, 150, 200), np.uint8)  # pink tissue everywhere
    mask = np.zeros((4 * CELL, 4 * CELL), np.uint8)
    for (i, j), cov in np.ndenumerate(COVERAGE):
        mask[i * CELL : i * CELL + ROWS[i, j], j * CELL : (j + 1) * CELL] = 1
    for i, j in WHITE:
        image[i * CELL : (i + 1) * CELL, j * CELL : (j + 1) * CELL] = 250
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    return convert_slide(tmp_path / "img.tif", tmp_path / "k.zarr", mask=tmp_path / "mask.tif", chunk=64)


def test_grid_positions_cover_the_axis():
    assert grid_positions(100, 32, 32) == [0, 32, 64, 68]
    assert grid_positions(96, 32, 16) == [0, 16, 32, 48, 64]
    assert grid_positions(20, 32, 32) == [0]


def test_coverage_filter_keeps_exactly_the_expected_patches(known_slide, tmp_path):
    params = PatchParams(size=CELL, downscale=1, min_coverage=0.1, max_coverage=0.9, negative_ratio=0.0, min_tissue=0.5)
    table = extract_patches(known_slide, tmp_path / "p.zarr", tmp_path / "p.csv", params)
    kept = set(zip(table["row"], table["col"]))
    expected = {divmod(k, 4) for k, c in enumerate(COVERAGE.ravel()) if 0.1 <= c <= 0.9}
    assert kept == expected == {(0, 2), (1, 0), (1, 3), (2, 1), (2, 2)}
    assert (table["reason"] == "positive").all()
    # the stored patches are the slide's pixels and the index CSV lines up with them
    store = zarr.open_group(tmp_path / "p.zarr", mode="r")
    assert store["images"].shape == (5, CELL, CELL, 3)
    np.testing.assert_allclose(store["masks"][:].mean(axis=(1, 2)), table["coverage"], atol=1e-6)
    csv = pd.read_csv(tmp_path / "p.csv")
    assert list(csv.columns[:6]) == ["slide_id", "index", "row", "col", "x", "y"]
    assert csv["x"].tolist() == (table["col"] * CELL).tolist()


def test_negatives_are_tissue_only_and_seeded(known_slide, tmp_path):
    params = PatchParams(size=CELL, downscale=1, negative_ratio=0.6, min_tissue=0.5, seed=3)
    a = extract_patches(known_slide, tmp_path / "a.zarr", tmp_path / "a.csv", params)
    b = extract_patches(known_slide, tmp_path / "b.zarr", tmp_path / "b.csv", params)
    negatives = a[a["reason"] == "negative"]
    assert len(negatives) == 3  # round(0.6 * 5 positives)
    assert (negatives["coverage"] == 0).all() and (negatives["tissue"] >= 0.5).all()
    assert not set(zip(negatives["row"], negatives["col"])) & WHITE
    pd.testing.assert_frame_equal(a, b)


def test_downscale_halves_patch_resolution(known_slide, tmp_path):
    params = PatchParams(size=CELL, downscale=2, min_coverage=0.0, max_coverage=1.0, negative_ratio=0)
    table = extract_patches(known_slide, tmp_path / "d.zarr", tmp_path / "d.csv", params)
    assert len(table) == 4  # 128 px slide at downscale 2 = 2x2 grid of 32 px patches
    assert set(table["x"]) == {0, 64}


def test_select_patches_drops_out_of_range_cells():
    coverage = np.array([[0.0, 0.05], [0.5, 0.95]])
    tissue = np.ones_like(coverage)
    reasons = select_patches(coverage, tissue, PatchParams(negative_ratio=1.0), np.random.default_rng(0))
    assert reasons.tolist() == [["negative", ""], ["positive", ""]]
