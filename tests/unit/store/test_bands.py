"""Band reading for tiled inference: every chunk decoded once, bands equal SlideStore.read_image."""

import numpy as np
import pytest
import zarr

from wsiseg.patches import grid_positions
from wsiseg.store.bands import BandReader
from wsiseg.store.chunks import compressor, create_level, interleave
from wsiseg.store.ngff import multiscales
from wsiseg.store.pyramid import build_pyramid, level_count
from wsiseg.store.slide import SlideStore


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A 1300 x 1100 random RGB slide store with 256² chunks and a pyramid."""
    path = tmp_path_factory.mktemp("bands") / "s.zarr"
    h, w, chunk = 1300, 1100, 256
    root = zarr.open_group(path, mode="w", zarr_format=2)
    create_level(root, "0", (3, h, w), chunk, compressor())[:] = np.random.default_rng(0).integers(
        0, 256, (3, h, w), dtype=np.uint8
    )
    levels = level_count(h, w, chunk)
    build_pyramid(root, levels, chunk, compressor(), "mean")
    root.attrs.update({"multiscales": multiscales("s", levels, "mean"), "wsiseg": {"slide_id": "s"}})
    return SlideStore(path)


@pytest.mark.parametrize("ds, tile, overlap", [(1.0, 300, 60), (2.0, 256, 64), (1.5, 200, 50), (3.0, 128, 0)])
def test_bands_equal_read_image_and_decode_each_chunk_once(store, ds, tile, overlap, monkeypatch):
    dh, dw = store.dims(ds)
    ys, xs = grid_positions(dh, tile, tile - overlap), grid_positions(dw, tile, tile - overlap)
    width = max(xs) + tile
    reads = []
    import wsiseg.store.bands as bands

    original = bands.read_region
    monkeypatch.setattr(
        bands, "read_region", lambda a, y0, y1, *rest, **kw: reads.append((y0, y1)) or original(a, y0, y1, *rest, **kw)
    )
    reader = BandReader(store, ds, width)
    for i, y in enumerate(ys):
        if i % 3 == 1:
            continue  # a tile row without tissue is not read
        band = reader.read(y, tile)
        expected = store.read_image(int(round(y * ds)), 0, (tile, width), ds)
        assert band.shape == expected.shape and np.array_equal(band, expected)
    rows = [r for y0, y1 in reads for r in range(y0, y1)]
    assert len(rows) == len(set(rows)), "a level row was decoded twice"


def test_bands_must_go_down_and_interleave_matches_numpy(store):
    reader = BandReader(store, 1.0, 512)
    reader.read(400, 100)
    with pytest.raises(ValueError, match="top to bottom"):
        reader.read(0, 100)
    planar = np.random.default_rng(1).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    assert np.array_equal(interleave(planar), planar.transpose(1, 2, 0))
    assert np.array_equal(interleave(planar[:1]), planar[:1].transpose(1, 2, 0))
    for planes in (planar, planar[:1]):  # into a view of a larger buffer
        buffer = np.zeros((7, 9, len(planes)), np.uint8)
        assert interleave(planes, out=buffer[1:6, 2:9]) is not None and np.array_equal(
            buffer[1:6, 2:9], planes.transpose(1, 2, 0)
        )
        assert not buffer[0].any() and not buffer[:, :2].any()
