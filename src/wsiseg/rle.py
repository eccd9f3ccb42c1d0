"""Run-length encoding in the Kaggle HuBMAP / DSB convention.

Pixels are numbered from 1 in column-major order (top to bottom, then left
to right) and a mask is written as space-separated ``start length`` pairs.
Large masks are encoded and decoded by column bands, so a 40k x 40k slide
never has to be transposed or held in memory as a whole.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from wsiseg.errors import RLEError

__all__ = ["encode", "decode", "parse", "decode_band", "encode_bands", "RLEError"]


ROWS = 1 << 20  # pixels per row chunk scanned at once (about a megabyte: stays in cache)


def _row_edges(band: np.ndarray, above: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of the pixels of ``band`` (rows, w) whose foreground state differs from the pixel above.

    ``above`` is the row above the band (0 for none).  Rows are compared as
    64-bit words (8 pixels at a time) in a padded copy of a cache-sized chunk;
    only words that changed are looked at pixel by pixel, so a mask is read
    about once and never transposed."""
    rows, w = band.shape
    wpad = -(-w // 8) * 8
    step = max(1, ROWS // wpad)
    buf = np.zeros((min(step, rows) + 1, wpad), np.uint8)
    ys: list[np.ndarray] = []
    xs: list[np.ndarray] = []
    prev = np.asarray(above) != 0
    for r0 in range(0, rows, step):
        chunk = band[r0 : r0 + step]
        n = chunk.shape[0]
        view = buf[: n + 1]
        view[0, :w] = prev
        if chunk.dtype.itemsize == 1 and chunk.dtype.kind in "biu":
            view[1:, :w] = chunk.view(np.uint8)  # raw values: words that differ are checked exactly below
        else:
            np.not_equal(chunk, 0, out=view[1:, :w].view(bool))
        words = view.view(np.uint64)
        changed = np.flatnonzero(words[1:] != words[:-1])
        if len(changed):
            flat = words.reshape(-1)
            cols = words.shape[1]
            below = flat[changed + cols].view(np.uint8).reshape(-1, 8) != 0
            upper = flat[changed].view(np.uint8).reshape(-1, 8) != 0
            k, j = np.nonzero(below != upper)
            ys.append(changed[k] // cols + r0)
            xs.append((changed[k] % cols) * 8 + j)
        prev = view[n, :w] != 0
    if not ys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ys).astype(np.int64), np.concatenate(xs).astype(np.int64)


def _band_edges(band: np.ndarray, before: bool) -> np.ndarray:
    """Sorted 0-based column-major positions, within ``band`` (height, w), where the foreground state changes
    from the previous pixel in column-major order (``before``: the foreground state of the pixel before the
    band's first one, the bottom of the previous column)."""
    height, w = band.shape
    ys, xs = _row_edges(band[1:], band[0])  # inside columns: pixel (y, x) against (y - 1, x)
    top = band[0] != 0  # the top pixel of each column against the bottom pixel of the column before
    bottom = np.empty(w, bool)
    bottom[0] = before
    bottom[1:] = band[-1, :-1] != 0
    heads = np.flatnonzero(top != bottom)
    edges = np.concatenate([xs * height + ys + 1, heads.astype(np.int64) * height])
    edges.sort()
    return edges


def _format(edges: np.ndarray, step: int = 1 << 16) -> str:
    """``start length`` text of run edges (start, end, start, end, ...), formatted in pieces of
    ``step`` numbers: Python's ints and strings of only one piece exist at a time."""
    pairs = edges.reshape(-1, 2).copy()
    pairs[:, 1] -= pairs[:, 0]  # end -> length
    pairs[:, 0] += 1  # pixels are numbered from 1
    flat = pairs.ravel()
    return " ".join(" ".join(map(str, flat[i : i + step].tolist())) for i in range(0, len(flat), step))


def encode_bands(bands: Iterator[tuple[int, np.ndarray]], height: int) -> str:
    """Encode a mask given as ``(x0, band)`` column bands of shape (height, w), left to right."""
    all_edges: list[np.ndarray] = []
    before, end = False, 0
    for x0, band in bands:
        if band.shape[1] == 0:
            continue
        all_edges.append(_band_edges(band, before) + x0 * height)
        before = bool(band[-1, -1] != 0)
        end = (x0 + band.shape[1]) * height
    if before:  # the last run ends with the image
        all_edges.append(np.array([end], np.int64))
    if not all_edges:
        return ""
    return _format(np.concatenate(all_edges))


def encode(mask: np.ndarray, band: int = 4096) -> str:
    """Encode a 2-D mask (non-zero = foreground) as a column-major, 1-indexed RLE string.

    Read in column bands of ``band`` pixels (views, no copies): memory beyond the
    mask stays a few megabytes plus the runs, whatever its size."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RLEError(f"RLE encodes 2-D masks, got shape {mask.shape}")
    if mask.shape[0] == 0:
        return ""
    bands = ((x, mask[:, x : x + band]) for x in range(0, mask.shape[1], band))
    return encode_bands(bands, mask.shape[0])


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
        raise RLEError(
            f"{source}: RLE runs overlap or are out of order at pair {bad + 1} (start {int(starts[bad]) + 1})"
        )
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
