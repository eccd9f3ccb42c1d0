"""Group k-fold over slides: every slide's patches stay in one fold (no leakage across folds)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from wsiseg.errors import ConfigError


def assign_folds(slides: Sequence[str], k: int, seed: int = 0) -> dict[str, int]:
    """Fold 0..k-1 of each slide id: a ``seed``-shuffled round robin over the sorted ids.

    Deterministic for (set of slides, k, seed), whatever the sample-sheet order;
    fold sizes differ by at most one slide."""
    unique = sorted(set(slides))
    if k < 2:
        raise ConfigError(f"train.folds: k-fold needs k >= 2, got {k}")
    if len(unique) < k:
        raise ConfigError(
            f"train.folds = {k} needs at least {k} train/val slides with masks, the sample sheet has {len(unique)}"
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i]: n % k for n, i in enumerate(order)}


def fold_split(slides: Sequence[str], k: int, fold: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training slides, validation slides) of ``fold``, both in the order of ``slides``."""
    if not 0 <= fold < k:
        raise ConfigError(f"fold {fold} is not in 0..{k - 1}")
    folds = assign_folds(slides, k, seed)
    return [s for s in slides if folds[s] != fold], [s for s in slides if folds[s] == fold]
