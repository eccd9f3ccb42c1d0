"""Model folders that travel: checkpoint(s) plus ``model.json``, the model card; and provenance hashes.

Training writes ``{out_dir}/model.json`` next to ``model.ckpt`` (k-fold: the
summary folder lists every fold's checkpoint).  ``predict.model`` and
``wsiseg predict`` accept such a folder, a checkpoint, or a list of either
(all averaged as an ensemble).  Nothing here imports torch, so the workflow's
dry run can resolve and check ``predict.model`` in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from wsiseg.errors import ModelError
from wsiseg.utils.io import atomic_path

CARD = "model.json"
CARD_FORMAT = "wsiseg-model-card/1"
# config keys that do not change what a run computes: left out of provenance hashes
NOT_RESULTS = ("results", "resources", "slides_per_job", "samples", "demo")
LABEL_COLOURS = [(230, 30, 30), (30, 160, 30), (30, 80, 230), (230, 180, 0), (180, 30, 180), (0, 180, 180)]


def wsiseg_version() -> str:
    """The installed wsiseg version (the package's ``__version__`` when running from a source tree)."""
    try:
        from importlib.metadata import version

        return version("wsiseg")
    except Exception:
        from wsiseg import __version__

        return __version__


def file_sha256(path: str | Path, block: int = 2**22) -> str:
    """Hex sha256 of a file, read in ``block``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def config_hash(config: Mapping[str, Any] | None, skip: Sequence[str] = NOT_RESULTS) -> str | None:
    """Hex sha256 of ``config`` (keys in any order) without the top-level ``skip`` keys; None without a config."""
    if config is None:
        return None
    kept = {k: v for k, v in config.items() if k not in skip}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def label_names(classes: int, class_names: Sequence[str] | None = None, class_name: str = "foreground") -> list[str]:
    """Name of each label value: binary models (``classes`` 1) ``[background, class_name]``; multi-class
    ``class_names[c]`` where given, else ``background`` for 0 and ``class{c}``."""
    if classes <= 1:
        names = list(class_names or [])
        return ["background", names[1] if len(names) > 1 else class_name]
    given = list(class_names or [])
    return [given[c] if c < len(given) else ("background" if c == 0 else f"class{c}") for c in range(classes)]


def label_colour(value: int) -> tuple[int, int, int]:
    """Display colour (RGB) of label value ``value`` (> 0; 0 is background)."""
    return LABEL_COLOURS[(value - 1) % len(LABEL_COLOURS)]


def read_model_card(folder: str | Path) -> dict:
    """The model card ``folder/model.json`` (:class:`ModelError` naming the file when unreadable)."""
    path = Path(folder) / CARD
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: not a readable wsiseg model card ({err})") from None
    if not isinstance(card, dict) or not card.get("checkpoints"):
        raise ModelError(f"{path}: model card lists no checkpoints")
    return card


@dataclass
class ModelSpec:
    """Checkpoints of a model given as checkpoint files and/or model folders, with their model cards."""

    checkpoints: list[Path]
    cards: dict[str, dict] = field(default_factory=dict)  # model folder -> its card
    expected: dict[str, str] = field(default_factory=dict)  # checkpoint path -> sha256 its card records
    _sums: dict[str, str] = field(default_factory=dict, repr=False)  # checkpoint path -> sha256, computed once

    @property
    def class_names(self) -> list[str] | None:
        """Class names of the (first) model card, if any."""
        for card in self.cards.values():
            if card.get("class_names"):
                return list(card["class_names"])
        return None

    @property
    def resolution(self) -> dict:
        """The (first) model card's training resolution: ``mpp`` (um per model pixel) and ``downscale``
        (either may be None); empty without a card (bare checkpoints tell it once loaded)."""
        for card in self.cards.values():
            if card.get("resolution"):
                return dict(card["resolution"])
        return {}

    def provenance(self, verify: bool = True) -> dict:
        """``{"checkpoints": [{path, sha256}], "model_cards": [...], "wsiseg_version": ...}``; with ``verify``
        a checkpoint whose sha256 differs from its model card's is a :class:`ModelError`."""
        entries = []
        for checkpoint in self.checkpoints:
            if str(checkpoint) not in self._sums:
                self._sums[str(checkpoint)] = file_sha256(checkpoint)
            digest = self._sums[str(checkpoint)]
            expected = self.expected.get(str(checkpoint))
            if verify and expected and expected != digest:
                raise ModelError(
                    f"{checkpoint}: sha256 {digest[:12]}… differs from its model card's {expected[:12]}… (file changed or replaced)"
                )
            entries.append({"path": str(checkpoint), "sha256": digest})
        cards = [
            {"path": str(Path(f) / CARD), "name": c.get("name"), "config_hash": c.get("config_hash")}
            for f, c in self.cards.items()
        ]
        return {"checkpoints": entries, "model_cards": cards, "wsiseg_version": wsiseg_version()}


def resolve_model(spec: str | Path | Sequence[str | Path], key: str = "predict.model") -> ModelSpec:
    """The checkpoints of ``spec``: a checkpoint file, a model folder (its ``model.json`` lists them) or a list of either.

    Problems are one-line :class:`ModelError` naming ``key`` and the path."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not items:
        raise ModelError(f"`{key}` is an empty list: give a model folder or checkpoint")
    result = ModelSpec([])
    for item in items:
        path = Path(item)
        if not path.exists():
            raise ModelError(f"`{key}`: {path} does not exist (expected a model folder with {CARD}, or a .ckpt file)")
        if path.is_dir():
            if not (path / CARD).is_file():
                raise ModelError(f"`{key}`: {path} is a folder without {CARD} (a model folder written by wsiseg train)")
            card = read_model_card(path)
            result.cards[str(path)] = card
            for entry in card["checkpoints"]:
                checkpoint = path / _inside(path, entry.get("path"), key)
                if not checkpoint.is_file():
                    raise ModelError(f"`{key}`: {checkpoint}, listed in {path / CARD}, does not exist")
                result.checkpoints.append(checkpoint)
                if entry.get("sha256"):
                    result.expected[str(checkpoint)] = entry["sha256"]
        else:
            result.checkpoints.append(path)
    _check_cards_agree(result.cards, key)
    return result


def _inside(folder: Path, entry: Any, key: str) -> str:
    """A checkpoint path listed in ``folder``'s card, once it lies inside ``folder``.

    Checked on the path as written (``..`` or absolute), not on where symbolic links lead: a folder whose
    checkpoint is a link into a data store (git-annex, DVC) stays usable, a card naming another folder's
    checkpoint does not travel with its folder and is refused."""
    text = str(entry or "")
    normal = os.path.normpath(text)
    if not text or os.path.isabs(text) or normal == ".." or normal.startswith(".." + os.sep):
        raise ModelError(
            f"`{key}`: {folder / CARD} lists the checkpoint {text!r}, outside its folder {folder}: "
            "a model folder holds its own checkpoints (copy the checkpoint in, or give its own model folder)"
        )
    return normal


def _resolution_text(mpp: Any, downscale: Any) -> str:
    parts = [f"{float(mpp):g} um/px" if mpp else None, f"downscale {float(downscale):g}" if downscale else None]
    return ", ".join(p for p in parts if p) or "no recorded resolution"


def _same(a: Any, b: Any) -> bool:
    """Two recorded resolution values (um/px or downscale; None where unknown) agree."""
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-6)


def _card_model(card: Mapping) -> tuple[int, Any, Any]:
    """(classes, um/px, downscale) a model card records."""
    resolution = card.get("resolution") or {}
    return int(card.get("classes", 1)), resolution.get("mpp"), resolution.get("downscale")


def _check_cards_agree(cards: Mapping[str, Mapping], key: str) -> None:
    """One ensemble averages one set of classes at one resolution: model cards that disagree are a
    :class:`ModelError` (found from the cards alone, so a dry run stops on it)."""
    if len(cards) < 2:
        return
    models = {folder: _card_model(card) for folder, card in cards.items()}
    first, (classes, mpp, downscale) = next(iter(models.items()))
    for folder, (c, m, d) in models.items():
        if c != classes:
            raise ModelError(
                f"`{key}`: the models predict different classes ({first}: {classes}, {folder}: {c}); "
                "an ensemble averages the probabilities of one set of classes"
            )
        if not (_same(m, mpp) and _same(d, downscale)):
            raise ModelError(
                f"`{key}`: the models were trained at different resolutions ({first}: "
                f"{_resolution_text(mpp, downscale)}, {folder}: {_resolution_text(m, d)}); "
                "an ensemble reads one tile for every member"
            )


def model_problems(spec: str | Path | Sequence[str | Path], key: str = "predict.model") -> list[str]:
    """What the model cards of ``spec`` alone show to be wrong (one line each; none: ``[]``): a missing
    checkpoint or card, a checkpoint outside its folder, members of different classes or resolutions,
    a checkpoint whose sha256 is not its card's.  For the dry run: hashing reads every checkpoint once."""
    try:
        resolve_model(spec, key).provenance(verify=True)
    except ModelError as err:
        text = str(err)
        return [text if text.startswith(f"`{key}`") else f"`{key}`: {text}"]
    return []


def card_listing(checkpoint: str | Path) -> tuple[Path, dict] | None:
    """(path, card) of the model card in ``checkpoint``'s folder when that card lists this checkpoint
    (a fold's own card inside a cross-validation folder too); None otherwise."""
    checkpoint = Path(checkpoint)
    path = checkpoint.parent / CARD
    try:
        card = json.loads(path.read_text())
        listed = [os.path.normpath(str(entry["path"])) for entry in card["checkpoints"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (path, card) if checkpoint.name in listed else None


def check_checkpoint(checkpoint: str | Path, hparams: Mapping[str, Any]) -> None:
    """A :class:`ModelError` when the model in ``checkpoint`` (its ``hparams``, as loaded) is not the one
    its model card describes: other classes, or another training resolution (um/px, downscale).

    A checkpoint replaced by another model, with its sha256 in the card updated, would otherwise predict
    at the card's resolution with the card's class names.  Without a card beside it, nothing to check."""
    found = card_listing(checkpoint)
    if found is None:
        return
    path, card = found
    classes, mpp, downscale = _card_model(card)
    got = int(hparams.get("classes", 1)), hparams.get("mpp"), hparams.get("downscale")
    if got[0] != classes or not (_same(got[1], mpp) and _same(got[2], downscale)):
        raise ModelError(
            f"{checkpoint}: holds a {got[0]}-class model trained at {_resolution_text(got[1], got[2])}, but its "
            f"model card {path} describes {classes} class(es) at {_resolution_text(mpp, downscale)} "
            "(checkpoint replaced?); put back the checkpoint the card describes, or the card written with it"
        )


def _final_metrics(metrics: pd.DataFrame) -> dict:
    """The validation metrics of the best epoch (by ``val_dice``) of a per-epoch table, plus the epoch count."""
    if metrics is None or not len(metrics) or "val_dice" not in metrics:
        return {}
    best = metrics.loc[metrics["val_dice"].idxmax()]
    out = {"best_epoch": int(best["epoch"]), "epochs": int(metrics["epoch"].max()) + 1}
    for column in metrics.columns:
        if column.startswith("val_") and not math.isnan(float(best[column])):
            out[column] = round(float(best[column]), 6)
    return out


def _slides(stores: Sequence[str | Path]) -> list[str]:
    """Slide ids of patch stores."""
    import zarr

    return [str(zarr.open_group(s, mode="r").attrs.get("slide_id", Path(s).stem)) for s in stores]


def write_model_card(
    out_dir: str | Path,
    hparams: Mapping[str, Any],
    train_patches: Sequence[str | Path],
    val_patches: Sequence[str | Path],
    metrics: pd.DataFrame | None = None,
    config: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    class_name: str = "foreground",
    checkpoints: Sequence[str] = ("model.ckpt",),
) -> Path:
    """Write ``out_dir/model.json`` for the trained model whose ``hparams`` (the LightningModule's) are given.

    Records architecture and encoder (as built, where its weights came from: hub revision or file sha256,
    and the input mean/std it was trained with), classes with names (``class_names``
    by label value, else from ``class_name``) and colours, training
    resolution (``mpp``: um per model pixel when the slides' pixel size is
    known; ``downscale``: level-0 pixels per model pixel when the same for
    every slide; the patch side in um),
    patch size, training and validation slide ids, the best epoch's
    validation metrics, the wsiseg version, ``config`` (None from the CLI)
    and its hash, and the sha256 of each of ``checkpoints`` (relative to
    ``out_dir``).  Returns the card's path."""
    out_dir = Path(out_dir)
    classes = int(hparams.get("classes", 1))
    names = label_names(classes, class_names, class_name)
    mpp, downscale, size = hparams.get("mpp"), hparams.get("downscale"), int(hparams["patch_size"])
    card = {
        "format": CARD_FORMAT,
        "name": out_dir.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "architecture": {
            k: hparams.get(k)
            for k in ("arch", "encoder", "encoder_depth", "decoder_channels", "encoder_weights", "loss")
        },
        "classes": classes,
        "class_names": names,
        "class_colours": [None] + ["#%02x%02x%02x" % label_colour(v) for v in range(1, len(names))],
        "resolution": {
            "mpp": mpp,
            "downscale": float(downscale) if downscale is not None else None,
            "patch_size_um": round(size * mpp, 3) if mpp else None,
        },
        "patch_size": size,
        "encoder": {
            "name": hparams.get("encoder"),
            "built_as": hparams.get("encoder_build"),  # the timm architecture and keyword arguments
            "weights": hparams.get("encoder_source"),  # none, named, hub repo + revision, or file + sha256
            "normalize": hparams.get("normalize"),  # the input mean/std (0-1) training and predict use
            "frozen": bool(hparams.get("freeze_encoder")),
            "unfreeze_blocks": int(hparams.get("unfreeze_blocks") or 0),
        },
        "stain_normaliser": hparams.get("stain"),
        "torch_threads": hparams.get("torch_threads"),  # CPU results are bit-for-bit for one seed and thread count
        "slides": {"train": _slides(train_patches), "val": _slides(val_patches)},
        "metrics": _final_metrics(metrics),
        "wsiseg_version": wsiseg_version(),
        "config": dict(config) if config is not None else None,
        "config_hash": config_hash(config),
        "checkpoints": [{"path": c, "sha256": file_sha256(out_dir / c)} for c in checkpoints],
    }
    path = out_dir / CARD
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(card, indent=2, default=str))
    return path


def write_folds_card(fold_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Model card of a cross-validation ensemble in ``out_dir`` from the fold folders' own cards.

    Lists every fold's checkpoint (relative to ``out_dir``) with its sha256,
    the slides and final metrics of each fold and the mean validation Dice."""
    out_dir = Path(out_dir)
    cards = [read_model_card(f) for f in fold_dirs]
    first = cards[0]
    checkpoints, folds = [], []
    for k, (folder, card) in enumerate(zip(fold_dirs, cards)):
        for entry in card["checkpoints"]:
            rel = Path(folder).resolve().relative_to(out_dir.resolve()) / entry["path"]
            checkpoints.append({"path": rel.as_posix(), "sha256": file_sha256(out_dir / rel)})
        folds.append({"fold": k, "slides": card["slides"], "metrics": card["metrics"]})
    dice = [c["metrics"]["val_dice"] for c in cards if "val_dice" in c.get("metrics", {})]
    card = {
        **{k: v for k, v in first.items() if k not in ("slides", "metrics", "checkpoints", "name")},
        "name": out_dir.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "slides": {
            "train": sorted({s for c in cards for s in c["slides"]["train"]}),
            "val": sorted({s for c in cards for s in c["slides"]["val"]}),
        },
        "metrics": {"val_dice": round(sum(dice) / len(dice), 6)} if dice else {},
        "folds": folds,
        "checkpoints": checkpoints,
    }
    path = out_dir / CARD
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(card, indent=2, default=str))
    return path
