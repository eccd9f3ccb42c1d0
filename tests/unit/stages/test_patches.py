import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from wsiseg.convert import convert_slide
from wsiseg.imaging.tissue import tissue_mask
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
    params = PatchParams(
        size=CELL, stride=CELL, downscale=1, min_coverage=0.1, max_coverage=0.9, negative_ratio=0.0, min_tissue=0.5
    )
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
    params = PatchParams(size=CELL, stride=CELL, downscale=1, negative_ratio=0.6, min_tissue=0.5, seed=3)
    a = extract_patches(known_slide, tmp_path / "a.zarr", tmp_path / "a.csv", params)
    b = extract_patches(known_slide, tmp_path / "b.zarr", tmp_path / "b.csv", params)
    negatives = a[a["reason"] == "negative"]
    assert len(negatives) == 3  # round(0.6 * 5 positives)
    assert (negatives["coverage"] == 0).all() and (negatives["tissue"] >= 0.5).all()
    assert not set(zip(negatives["row"], negatives["col"])) & WHITE
    pd.testing.assert_frame_equal(a, b)


def test_downscale_halves_patch_resolution(known_slide, tmp_path):
    params = PatchParams(size=CELL, stride=CELL, downscale=2, min_coverage=0.0, max_coverage=1.0, negative_ratio=0)
    table = extract_patches(known_slide, tmp_path / "d.zarr", tmp_path / "d.csv", params)
    assert len(table) == 4  # 128 px slide at downscale 2 = 2x2 grid of 32 px patches
    assert set(table["x"]) == {0, 64}


def test_select_patches_drops_out_of_range_cells():
    coverage = np.array([[0.0, 0.05], [0.5, 0.95]])
    tissue = np.ones_like(coverage)
    reasons = select_patches(coverage, tissue, PatchParams(negative_ratio=1.0), np.random.default_rng(0))
    assert reasons.tolist() == [["negative", ""], ["positive", ""]]


def test_absolute_negatives_and_random_cells_are_recorded(known_slide, tmp_path):
    params = PatchParams(size=CELL, stride=CELL, downscale=1, negatives=2, random=3, min_tissue=0.5, seed=1)
    table = extract_patches(known_slide, tmp_path / "r.zarr", tmp_path / "r.csv", params, out_tissue=tmp_path / "t.png")
    assert table["reason"].value_counts().to_dict() == {"positive": 5, "random": 3, "negative": 2}
    assert (table.loc[table["reason"] == "negative", "coverage"] == 0).all()
    positives = {divmod(k, 4) for k, c in enumerate(COVERAGE.ravel()) if 0.1 <= c <= 0.9}
    assert (
        not set(zip(table.loc[table["reason"] != "positive", "row"], table.loc[table["reason"] != "positive", "col"]))
        & positives
    )
    assert len(set(zip(table["row"], table["col"]))) == len(table)  # no cell kept twice
    assert (table["level"] == 0).all() and (table["downscale"] == 1).all()


@pytest.mark.parametrize("method", ["saturation", "otsu", "otsu_gray"])
def test_tissue_artifact_marks_the_white_row_as_background(known_slide, tmp_path, method):
    params = PatchParams(
        size=CELL, stride=CELL, downscale=1, tissue_method=method, negative_ratio=0, random=16
    )  # keeps every cell
    table = extract_patches(known_slide, tmp_path / "p.zarr", tmp_path / "p.csv", params, out_tissue=tmp_path / "t.png")
    tissue = cv2.imread(str(tmp_path / "t.png"), cv2.IMREAD_GRAYSCALE)
    assert tissue.shape == (4 * CELL, 4 * CELL)
    assert (tissue[3 * CELL + 2 :] == 0).all() and (tissue[: 3 * CELL - 2] == 255).all()
    assert set(table.loc[table["row"] == 3, "tissue"]) == {0.0} and (table.loc[table["row"] < 3, "tissue"] == 1).all()
    assert zarr.open_group(tmp_path / "p.zarr", mode="r").attrs["tissue_share"] == pytest.approx(0.75, abs=0.02)


def test_otsu_does_not_call_a_blank_slide_half_tissue():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(245, 3, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(glass, method="otsu").any() and not tissue_mask(glass, method="otsu_gray").any()
    with pytest.raises(ValueError, match="tissue method"):
        tissue_mask(glass, method="triangle")


@pytest.fixture
def palette_slide(tmp_path):
    """A 128x128 slide whose RGB mask holds class 1 (red) in the top half-row, class 2 (blue) in one cell."""
    image = np.full((128, 128, 3), (230, 150, 200), np.uint8)
    mask = np.zeros((128, 128, 3), np.uint8)
    mask[0:16, 0:64] = (255, 0, 0)  # cell (0, 0) of 64 px: 25% class 1
    mask[64:128, 64:96] = (0, 0, 255)  # cell (1, 1): 50% class 2
    mask[64:80, 64:96] = (255, 0, 0)  # ... of which 1/4 turns class 1: 12.5% class 1, 37.5% class 2
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "mask.tif", mask, photometric="rgb")
    return convert_slide(
        tmp_path / "img.tif",
        tmp_path / "m.zarr",
        mask=tmp_path / "mask.tif",
        chunk=64,
        palette={"#ff0000": 1, "#0000ff": 2},
    )


def test_multiclass_masks_give_per_class_coverage(palette_slide, tmp_path):
    params = PatchParams(size=32, stride=32, downscale=2, min_coverage=0.05, max_coverage=1, negative_ratio=0)
    table = extract_patches(palette_slide, tmp_path / "p.zarr", tmp_path / "p.csv", params)
    assert list(table.columns[9:12]) == ["coverage", "coverage_1", "coverage_2"]
    cells = table.set_index(["row", "col"])
    np.testing.assert_allclose(cells.loc[(0, 0), ["coverage", "coverage_1", "coverage_2"]], [0.25, 0.25, 0])
    np.testing.assert_allclose(cells.loc[(1, 1), ["coverage", "coverage_1", "coverage_2"]], [0.5, 0.125, 0.375])
    store = zarr.open_group(tmp_path / "p.zarr", mode="r")
    assert store.attrs["classes"] == 3 and set(np.unique(store["masks"][:])) == {0, 1, 2}
    for n, row in table.iterrows():  # stored labels agree with the index (at 2x down, areas are exact here)
        labels = store["masks"][n]
        np.testing.assert_allclose([(labels == 1).mean(), (labels == 2).mean()], [row["coverage_1"], row["coverage_2"]])
    binary = extract_patches(
        palette_slide, tmp_path / "b.zarr", tmp_path / "b.csv", PatchParams(**{**params.__dict__, "classes": 1})
    )
    assert "coverage_1" not in binary and set(np.unique(zarr.open_group(tmp_path / "b.zarr")["masks"][:])) == {0, 1}
    with pytest.raises(ValueError, match="label 2 found, but patches.classes is 2"):
        extract_patches(
            palette_slide, tmp_path / "c.zarr", tmp_path / "c.csv", PatchParams(**{**params.__dict__, "classes": 2})
        )


def test_slide_smaller_than_a_patch_gives_one_padded_patch(tmp_path):
    """DSB-sized images: a 40x50 image with 64 px patches is one patch, white and background outside it."""
    image = np.full((40, 50, 3), 60, np.uint8)
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 10:30] = 1
    tifffile.imwrite(tmp_path / "small.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "small_mask.tif", mask)
    slide = convert_slide(tmp_path / "small.tif", tmp_path / "small.zarr", mask=tmp_path / "small_mask.tif")
    params = PatchParams(size=64, stride=64, downscale=1, min_coverage=0.01, max_coverage=1.0, min_tissue=0.0)
    table = extract_patches(slide, tmp_path / "p.zarr", tmp_path / "p.csv", params)
    assert len(table) == 1 and table.loc[0, "coverage"] == pytest.approx(400 / 64**2)
    patch = zarr.open_group(tmp_path / "p.zarr", mode="r")
    np.testing.assert_array_equal(patch["images"][0][:40, :50], image)
    assert (patch["images"][0][40:] == 255).all() and (patch["images"][0][:, 50:] == 255).all()
    assert patch["masks"][0].sum() == 400 and patch["masks"][0][40:].sum() == 0


def test_default_grid_is_half_overlapping(tmp_path):
    """Without `stride`, patches start every size/2 pixels (config/config.yaml's default)."""
    image = np.full((128, 160, 3), 200, np.uint8)
    mask = np.ones((128, 160), np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "m.tif", mask)
    slide = convert_slide(tmp_path / "s.tif", tmp_path / "s.zarr", mask=tmp_path / "m.tif")
    params = PatchParams(size=64, downscale=1, min_coverage=0.0, max_coverage=1.0, min_tissue=0.0)
    table = extract_patches(slide, tmp_path / "p.zarr", tmp_path / "p.csv", params)
    assert sorted(set(table["x"])) == [0, 32, 64, 96] and sorted(set(table["y"])) == [0, 32, 64]
