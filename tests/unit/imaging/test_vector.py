"""GeoJSON for QuPath: valid, pixel-exact, RFC 7946-oriented polygons with ids, classes and measurements."""

import json
import uuid

import numpy as np
import pytest
import shapely
import zarr
from geojson_pydantic import FeatureCollection
from shapely.geometry import shape
from support.stores import write_prediction

from wsiseg.imaging.vector import (
    label_objects,
    mask_geometries,
    object_geometries,
    object_measurements,
    qupath_features,
)
from wsiseg.report import export_geojson, match_objects, objects


def tricky_masks() -> dict[str, np.ndarray]:
    """Masks on which centre-line contour tracing gives invalid or wrong-sized polygons."""
    masks = {}
    m = np.zeros((50, 50), np.uint8)
    m[5:35, 5:35] = 1
    m[15:25, 15:25] = 0
    masks["square with hole"] = m  # 900 - 100 = 800 px
    m = np.zeros((12, 12), np.uint8)
    m[2:5, 2:5] = 1
    m[5:8, 5:8] = 1  # touches the first only at a corner
    masks["corner touching"] = m
    m = np.zeros((30, 30), np.uint8)
    m[5:25, 5:25] = 1
    m[10:20, 10:20] = 0
    m[10:20, 15] = 1  # a 1-px bridge across the hole: two holes
    masks["hole with 1-px bridge"] = m
    m = np.zeros((20, 20), np.uint8)
    m[3:15, 3:15] = 1
    m[6:9, 6:9] = 0
    m[9, 9] = 0
    m[10:12, 10:12] = 0  # two holes touching each other at corners, and a hole touching the outside at a corner
    m[12:15, 12] = 0
    m[14, 12:15] = 0
    masks["holes touching at corners"] = m
    m = np.zeros((16, 16), np.uint8)
    m[3:13, 3:13] = 1
    m[4:12, 4:12] = 0  # a 1-px wide ring
    m[7:9, 7:9] = 1  # an island in its hole: a second object
    masks["1-px ring with island"] = m
    m = np.zeros((9, 9), np.uint8)
    m[1, 1] = m[4, 6] = m[8, 8] = 1  # single pixels, one in the corner of the image
    masks["single pixels"] = m
    m = np.zeros((8, 8), np.uint8)
    m[1:7, 1:7] = np.indices((6, 6)).sum(0) % 2  # checkerboard: one 8-connected object of 18 pixels
    masks["checkerboard"] = m
    m = np.ones((10, 14), np.uint8)  # touches every image border
    masks["full image"] = m
    return masks


def assert_rfc7946(geometry) -> None:
    for polygon in shapely.get_parts(geometry):
        assert polygon.exterior.is_ccw, "exterior ring must be counter-clockwise"
        assert not any(ring.is_ccw for ring in polygon.interiors), "holes must be clockwise"


@pytest.mark.parametrize("name", list(tricky_masks()))
def test_polygons_are_valid_pixel_exact_and_one_per_counted_object(name):
    mask = tricky_masks()[name]
    labels, n = label_objects(mask)
    geometries = object_geometries(labels)
    assert len(geometries) == n == objects(mask)[1]  # the object F1's count
    for value, geometry in geometries.items():
        assert geometry.is_valid, (name, shapely.is_valid_reason(geometry))
        assert geometry.area == np.count_nonzero(labels == value)  # traced on pixel edges
        assert_rfc7946(geometry)
        # rasterising the outline back gives the object's pixels exactly
        ys, xs = np.nonzero(labels == value)
        inside = shapely.contains_xy(geometry, xs + 0.5, ys + 0.5)
        assert inside.all()
    assert sum(g.area for g in geometries.values()) == np.count_nonzero(mask)


def test_known_areas_and_shapes():
    masks = tricky_masks()
    (square,) = mask_geometries(masks["square with hole"])
    assert square.area == 800 and len(square.interiors) == 1 and square.bounds == (5, 5, 35, 35)
    (corner,) = mask_geometries(masks["corner touching"])
    assert corner.geom_type == "MultiPolygon" and len(corner.geoms) == 2 and corner.area == 18
    (bridged,) = mask_geometries(masks["hole with 1-px bridge"])
    assert bridged.geom_type == "Polygon" and len(bridged.interiors) == 2 and bridged.area == 400 - 100 + 10
    ring, island = sorted(mask_geometries(masks["1-px ring with island"]), key=lambda g: -g.area)
    assert ring.area == 36 and len(ring.interiors) == 1 and island.area == 4
    assert sorted(g.area for g in mask_geometries(masks["single pixels"])) == [1, 1, 1]
    (check,) = mask_geometries(masks["checkerboard"])
    assert check.is_valid and check.area == 18
    assert mask_geometries(np.zeros((5, 5), np.uint8)) == []


def test_random_masks_stay_valid_and_exact():
    rng = np.random.default_rng(3)
    for _ in range(40):
        mask = rng.random((24, 24)) < rng.uniform(0.2, 0.8)
        labels, n = label_objects(mask)
        geometries = object_geometries(labels, scale=2.0)
        assert len(geometries) == n
        for value, geometry in geometries.items():
            assert geometry.is_valid and geometry.area == 4 * np.count_nonzero(labels == value)
            assert_rfc7946(geometry)


def test_measurements_area_mpp_and_mean_probability():
    labels = np.array([[1, 1, 0], [0, 0, 2], [0, 2, 2]], np.int32)
    probability = np.array([[0.2, 0.6, 0.9], [0.0, 0.0, 0.5], [0.0, 0.8, 1.0]])
    rows = object_measurements(labels, 2, probability, scale=2.0, mpp=0.5)
    assert rows[0] == {"Area px^2": 8.0, "Area µm^2": 2.0, "Mean probability": pytest.approx(0.4)}
    assert rows[1]["Area px^2"] == 12.0 and rows[1]["Mean probability"] == pytest.approx(0.7667, abs=1e-4)
    assert "Area µm^2" not in object_measurements(labels, 2)[0]  # unknown pixel size: no physical area
    with pytest.raises(ValueError, match="differs from the mask"):
        object_measurements(labels, 2, probability[:2])


def test_features_have_uuid_ids_qupath_properties_and_validate():
    mask = tricky_masks()["corner touching"] | tricky_masks()["corner touching"].T[:, ::-1]
    features = list(qupath_features(mask, "glomerulus", (230, 30, 30), "s1", object_type="detection"))
    FeatureCollection.model_validate({"type": "FeatureCollection", "features": features})
    ids = [f["id"] for f in features]
    assert len(set(ids)) == len(ids) and all(uuid.UUID(i).version == 5 for i in ids)
    again = list(qupath_features(mask, "glomerulus", (230, 30, 30), "s1", object_type="detection"))
    assert [f["id"] for f in again] == ids  # the same objects get the same ids
    assert [f["id"] for f in qupath_features(mask, "glomerulus", (0, 0, 0), "s2")] != ids  # ids differ between slides
    props = features[0]["properties"]
    assert props["objectType"] == "detection" and props["classification"] == {
        "name": "glomerulus",
        "color": [230, 30, 30],
    }
    with pytest.raises(ValueError, match="object_type"):
        list(qupath_features(mask, "x", (0, 0, 0), object_type="cell"))


def test_export_geojson_from_a_prediction_store(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[:50, :50] = tricky_masks()["square with hole"]
    mask[50:62, 50:62] = tricky_masks()["corner touching"]
    mask[40, 60] = 1  # one pixel
    store = write_prediction(tmp_path / "p.zarr", mask)
    out = tmp_path / "p.geojson"
    assert export_geojson(store, out, "glomerulus") == 3 == match_objects(mask, mask)[1]
    data = json.loads(out.read_text())
    FeatureCollection.model_validate(data)
    areas = sorted(f["properties"]["measurements"]["Area px^2"] for f in data["features"])
    assert areas == [1, 18, 800]
    for feature in data["features"]:
        geometry = shape(feature["geometry"])
        assert geometry.is_valid and geometry.area == feature["properties"]["measurements"]["Area px^2"]
        assert_rfc7946(geometry)
        assert feature["properties"]["objectType"] == "annotation"
        assert feature["properties"]["measurements"]["Mean probability"] == 1.0  # the helper stores prob = mask
        assert "Area µm^2" not in feature["properties"]["measurements"]  # the store records no mpp

    zarr.open_group(store, mode="r+").attrs["mpp"] = 0.25
    assert export_geojson(store, out, "glomerulus", max_side=32) == 3  # traced on level 1 (32 px), scaled back
    features = json.loads(out.read_text())["features"]
    for feature in features:
        m = feature["properties"]["measurements"]
        assert shape(feature["geometry"]).area == m["Area px^2"] and m["Area µm^2"] == m["Area px^2"] / 16
        assert shape(feature["geometry"]).bounds[2] <= 64
