"""Run-length encoding in the Kaggle HuBMAP / DSB convention.

Pixels are numbered from 1 in column-major order (top to bottom, then left
to right) and a mask is written as space-separated ``start length`` pairs.
Large masks are encoded and decoded by column bands, so a 40k x 40k slide
never has to be transposed or held in memory as a whole.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["encode", "decode", "parse", "decode_band", "encode_bands", "RLEError"]


class RLEError(ValueError):
    """A run-length encoding that does not fit the image it describes."""


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based starts and lengths of the runs of non-zero values in ``flat``."""
    padded = np.zeros(flat.size + 2, dtype=np.int8)
    padded[1:-1] = flat != 0
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts = edges[::2]
    return starts.astype(np.int64), (edges[1::2] - starts).astype(np.int64)


def _format(starts: np.ndarray, lengths: np.ndarray) -> str:
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


def encode_bands(bands: Iterator[tuple[int, np.ndarray]], height: int) -> str:
    """Encode a mask given as ``(x0, band)`` column bands of shape (height, w), left to right."""
    all_starts: list[np.ndarray] = []
    all_lengths: list[np.ndarray] = []
    for x0, band in bands:
        starts, lengths = _runs(np.ascontiguousarray(band.T).ravel())
        if not len(starts):
            continue
        starts = starts + x0 * height
        if all_starts and all_starts[-1][-1] + all_lengths[-1][-1] == starts[0]:
            # a run continues across the band boundary: merge it
            all_lengths[-1][-1] += lengths[0]
            starts, lengths = starts[1:], lengths[1:]
        all_starts.append(starts)
        all_lengths.append(lengths.copy())
    if not all_starts:
        return ""
    return _format(np.concatenate(all_starts), np.concatenate(all_lengths))


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (non-zero = foreground) as a column-major, 1-indexed RLE string."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"RLE encodes 2-D masks, got shape {mask.shape}")
    return encode_bands(iter([(0, mask)]), mask.shape[0])


def _too_big(token: str) -> bool:
    """Whether an integer token does not fit int64 (Python refuses to convert over 4300 digits: too big too)."""
    try:
        return abs(int(token)) > np.iinfo(np.int64).max
    except ValueError:
        return True


def parse(rle: str | float | None, shape: tuple[int, int], source: str = "RLE") -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an RLE string; return 0-based starts and lengths.

    Raises :class:`RLEError` naming ``source`` when the string is malformed,
    runs overlap or are out of order, or a run goes past the image end.
    """
    if rle is None or (isinstance(rle, float) and np.isnan(rle)) or not str(rle).strip():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    try:
        values = np.array(str(rle).split(), dtype=np.int64)
    except OverflowError:
        big = next((t for t in str(rle).split() if _too_big(t)), "?")
        shown = big if len(big) <= 30 else f"{big[:12]}...{big[-6:]} ({len(big)} digits)"
        raise RLEError(
            f"{source}: RLE value {shown} is too large for any image (pixel numbers stop at "
            f"{int(shape[0]) * int(shape[1]):,} for shape {tuple(shape)})"
        ) from None
    except ValueError as err:
        raise RLEError(f"{source}: RLE contains a non-integer token ({err})") from None
    if len(values) % 2:
        raise RLEError(f"{source}: RLE has an odd number of values ({len(values)}); expected start/length pairs")
    starts, lengths = values[0::2] - 1, values[1::2]
    total = int(shape[0]) * int(shape[1])
    if (starts < 0).any():
        raise RLEError(f"{source}: RLE start below 1 (pixels are numbered from 1)")
    if (lengths < 1).any():
        raise RLEError(f"{source}: RLE has a run of length < 1")
    ends = starts + lengths
    if len(ends) and ends.max() > total:
        bad = int(np.argmax(ends > total))
        raise RLEError(
            f"{source}: RLE run {int(starts[bad]) + 1} {int(lengths[bad])} goes past the image end "
            f"({total} pixels for shape {tuple(shape)})"
        )
    if len(starts) > 1 and (starts[1:] < ends[:-1]).any():
        bad = int(np.argmax(starts[1:] < ends[:-1])) + 1
        raise RLEError(f"{source}: RLE runs overlap or are out of order at pair {bad + 1} (start {int(starts[bad]) + 1})")
    return starts, lengths


def decode_band(starts: np.ndarray, lengths: np.ndarray, height: int, x0: int, x1: int) -> np.ndarray:
    """Decode columns ``x0:x1`` of a parsed RLE into a uint8 (height, x1-x0) band."""
    lo, hi = x0 * height, x1 * height
    flat = np.zeros(hi - lo, dtype=np.uint8)
    ends = starts + lengths
    first = np.searchsorted(ends, lo, side="right")
    last = np.searchsorted(starts, hi, side="left")
    for s, e in zip(starts[first:last], ends[first:last]):
        flat[max(s, lo) - lo : min(e, hi) - lo] = 1
    return flat.reshape(x1 - x0, height).T


def decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode a column-major, 1-indexed RLE string into a uint8 mask of ``shape``."""
    starts, lengths = parse(rle, shape)
    return np.ascontiguousarray(decode_band(starts, lengths, int(shape[0]), 0, int(shape[1])))
