"""What every annotation source is (:class:`MaskSource`): blocks of a slide-sized mask, plus instance ids where
the source knows its objects, ``empty`` and ``found``.  This module imports none of its siblings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

Block = tuple[int, int, np.ndarray]  # (y0, x0, uint8 mask block)


class MaskSource(Protocol):
    """Yields the label image of one slide in blocks that tile the slide."""

    path: Path
    shape: tuple[int, int]
    classes: dict[int, tuple[int, int, int]]  # label value -> display colour
    empty: bool | None  # no foreground (None: unknown until rasterised)
    found: str  # what the source holds, e.g. "3 features: 3 Point, 0 polygons inside the image"

    def blocks(self, chunk: int) -> Iterator[Block]:
        """Yield ``(y0, x0, block)`` covering the whole slide, each block uint8 labels (0/1 when binary)."""
        ...


BINARY = {1: (255, 0, 0)}
