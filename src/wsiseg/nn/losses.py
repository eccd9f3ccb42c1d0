"""Segmentation losses from config: a weighted sum of segmentation-models-pytorch losses.

Config form (``train.loss``)::

    loss: {dice: 1.0, bce: 1.0}        # the default: Dice + BCE, equal weights
    loss: {lovasz: 1.0}                # Lovász hinge (a HuBMAP winning recipe)
    loss: {ce: 1.0, dice: 1.0}         # multi-class: cross-entropy (+ class_weights) and Dice

Binary models (one output channel) take float targets (n, 1, h, w) in {0, 1};
multi-class models (``classes`` >= 2 channels) take class indices (n, h, w).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import segmentation_models_pytorch as smp
import torch
from torch import nn

from wsiseg.errors import ConfigError

BINARY_ONLY = {"bce"}
MULTICLASS_ONLY = {"ce"}


def _weights(class_weights: Sequence[float] | None, classes: int) -> list[float] | None:
    """``class_weights`` as a list of ``classes`` floats (None: unweighted)."""
    if class_weights is None:
        return None
    if len(class_weights) != classes:
        raise ConfigError(f"train.class_weights has {len(class_weights)} value(s) but the model has {classes} classes")
    return [float(w) for w in class_weights]


def _cross_entropy(mode: str, weights: list[float] | None) -> nn.Module:
    return nn.CrossEntropyLoss(weight=None if weights is None else torch.tensor(weights))


LOSSES: dict[str, Callable[[str, list[float] | None], nn.Module]] = {
    "dice": lambda mode, w: smp.losses.DiceLoss(mode, from_logits=True),
    "jaccard": lambda mode, w: smp.losses.JaccardLoss(mode, from_logits=True),
    "tversky": lambda mode, w: smp.losses.TverskyLoss(mode, from_logits=True, alpha=0.3, beta=0.7),
    "focal": lambda mode, w: smp.losses.FocalLoss(mode, gamma=2.0),
    "lovasz": lambda mode, w: smp.losses.LovaszLoss(mode, per_image=False),
    "bce": lambda mode, w: nn.BCEWithLogitsLoss(),
    "ce": _cross_entropy,
}


class WeightedLoss(nn.Module):
    """``sum(weight * loss(logits, target))`` over the configured terms."""

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float]):
        super().__init__()
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {name: float(weights[name]) for name in terms}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted sum of every term on (logits, target)."""
        total = logits.new_zeros(())
        for name, term in self.terms.items():
            total = total + self.weights[name] * term(logits, target)
        return total


def build_loss(
    weights: Mapping[str, float], classes: int = 1, class_weights: Sequence[float] | None = None
) -> WeightedLoss:
    """A :class:`WeightedLoss` from ``{name: weight}`` (names in :data:`LOSSES`).

    ``classes == 1`` is binary (``bce`` allowed, ``ce`` not); ``classes >= 2``
    is multi-class (``ce`` allowed with ``class_weights``, ``bce`` not).
    A weight of None counts as 1; terms with weight 0 are left out; at least one must remain.
    Terms are summed in name order, so the order they are listed in never changes the result."""
    unknown = sorted(set(weights) - set(LOSSES))
    if unknown:
        raise ConfigError(f"train.loss: unknown loss(es) {unknown}; choose from {sorted(LOSSES)}")
    binary = classes == 1
    wrong = sorted(set(weights) & (MULTICLASS_ONLY if binary else BINARY_ONLY))
    if wrong:
        hint = "use 'bce' for a binary model" if binary else "use 'ce' for a multi-class model"
        raise ConfigError(
            f"train.loss: {wrong} does not apply to a {'binary' if binary else 'multi-class'} model; {hint}"
        )
    active = {name: 1.0 if w is None else float(w) for name, w in sorted(weights.items()) if w is None or float(w) != 0}
    if not active:
        raise ConfigError("train.loss: needs at least one loss with a non-zero weight")
    mode = smp.losses.BINARY_MODE if binary else smp.losses.MULTICLASS_MODE
    class_w = _weights(class_weights, classes)
    return WeightedLoss({name: LOSSES[name](mode, class_w) for name in active}, active)
