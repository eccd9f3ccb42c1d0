import numpy as np
import pytest

from wsiseg import rle


def test_hand_computed_column_major_example():
    # pixels are numbered down the columns: col 0 = 1,2,3; col 1 = 4,5,6; col 2 = 7,8,9
    mask = np.array([[0, 1, 0], [0, 1, 1], [0, 0, 1]], np.uint8)
    assert rle.encode(mask) == "4 2 8 2"
    np.testing.assert_array_equal(rle.decode("4 2 8 2", (3, 3)), mask)


def test_run_continues_from_bottom_of_one_column_to_top_of_next():
    mask = np.zeros((3, 2), np.uint8)
    mask[2, 0] = mask[0, 1] = 1
    assert rle.encode(mask) == "3 2"


def test_non_square_shape_is_height_by_width():
    mask = rle.decode("1 2", (2, 5))  # first column only
    assert mask.shape == (2, 5)
    assert mask[:, 0].tolist() == [1, 1] and mask[:, 1:].sum() == 0


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 33), (128, 128)])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_round_trip(shape, density):
    rng = np.random.default_rng(1)
    mask = (rng.random(shape) < density).astype(np.uint8)
    assert np.array_equal(rle.decode(rle.encode(mask), shape), mask)


def test_empty_mask_is_empty_string_and_decodes_to_zeros():
    assert rle.encode(np.zeros((4, 4))) == ""
    assert rle.decode("", (4, 4)).sum() == 0


@pytest.mark.parametrize("width", [1, 3, 8, 50])
def test_band_encoding_equals_whole_mask_encoding(width):
    rng = np.random.default_rng(2)
    mask = (rng.random((40, 50)) < 0.5).astype(np.uint8)
    bands = ((x, mask[:, x : x + width]) for x in range(0, 50, width))
    assert rle.encode_bands(bands, 40) == rle.encode(mask)


@pytest.mark.parametrize(
    "text, message",
    [
        ("5 10", "past the image end"),
        ("1 3 2 2", "overlap"),
        ("1 2 3", "odd number"),
        ("0 2", "below 1"),
        ("1 x", "non-integer"),
    ],
)
def test_invalid_rle_names_the_problem(text, message):
    with pytest.raises(rle.RLEError, match=message):
        rle.decode(text, (3, 4))
