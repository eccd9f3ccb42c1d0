"""The parameter sets of the torch stages (config ``train`` and ``predict``) as plain dataclasses.

Kept apart from the stage code so that the CLI (``wsiseg train --help``), the
config checks and anything else that only needs the settings never import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_LOSS = {"dice": 1.0, "bce": 1.0}


# train keys that never change what a run learns (results are identical for any num_workers:
# tests/test_resume.py): the workflow keeps them out of the train rule's params, so editing them (or a
# new default) never retrains; the train script reads them from the config.  `devices` stays a param:
# more GPUs make a larger effective batch.
UNTRACKED_KEYS = ("num_workers", "resume")
# train keys an interrupted run may resume across (wsiseg.train.fingerprint leaves them out)
RUNTIME_KEYS = (*UNTRACKED_KEYS, "devices")


@dataclass(frozen=True)
class TrainParams:
    """Model and optimisation settings (all plain values, as in config ``train``)."""

    arch: str = "Unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = None
    encoder_depth: int = 4
    decoder_channels: tuple[int, ...] | None = (128, 64, 32, 16)
    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS))
    class_weights: tuple[float, ...] | None = None  # cross-entropy weight per class (multi-class)
    augment: dict[str, Any] = field(default_factory=lambda: {"hflip": 0.5, "vflip": 0.5, "rot90": 0.5})
    stain_normalise: str | None = None  # macenko | reinhard | None (wsiseg.imaging.stain; travels with the model)
    stain_reference: str | None = None  # image the normaliser is fitted on; None = the training patches
    scheduler: str = "cosine"  # cosine | onecycle | none
    accumulate_grad_batches: int = 1
    early_stopping_patience: int = 0  # epochs without a better val_dice before stopping; 0 = off
    channels_last: bool = False
    compile: bool = False
    num_workers: int | str = (
        "auto"  # auto: 0 on CPU; on a GPU one per core but one, at most 8 (wsiseg.train.loader_workers)
    )
    accelerator: str = "auto"
    devices: int | str = "auto"
    precision: str = "auto"  # auto: 16-mixed on a GPU, 32 on CPU
    resume: bool = True  # continue an interrupted run from lightning/checkpoints/last.ckpt
    seed: int = 0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PredictParams:
    """Tiling, blending, test-time augmentation and thresholding (config ``predict``)."""

    tile: int = 512  # tile side at training resolution
    overlap: int = 128  # pixels shared by neighbouring tiles
    batch_size: int = 8
    threshold: float = 0.5
    blend: str = "gaussian"  # gaussian | ramp | constant
    tta: tuple[str, ...] = ()  # any of hflip, vflip, rot90 (averaged with the plain prediction)
    min_tissue: float = 0.02  # tiles with less tissue are skipped (probability 0)
    tissue_saturation: float = 0.08  # saturation threshold; floor of the Otsu-based methods
    tissue_method: str = "auto"  # auto | saturation | otsu | otsu_gray | fluorescence (see wsiseg.imaging.tissue)
    tissue_fallback: float = 0.01  # fewer tiles on tissue than this share: predict every tile, warn (0 = never)
    min_area: int = 0  # level-0 px: smaller predicted objects are removed
    max_hole: int = 0  # level-0 px: smaller holes in objects are filled
    min_area_um2: float | None = None  # as min_area, in um^2 (needs the slide's pixel size; overrides min_area)
    max_hole_um2: float | None = None  # as max_hole, in um^2 (needs the slide's pixel size; overrides max_hole)
    split_objects: str | None = (
        None  # watershed: separate touching objects (nuclei); None = off (wsiseg.imaging.instances)
    )
    split_min_distance_um: float = 3.0  # closest two object centres may be, in um (level-0 mpp known)
    split_min_distance_px: int = 12  # the same in level-0 px, used when the slide's pixel size is unknown
    chunk: int = 512
    prefetch: int = 4  # batches read ahead by the background reader
    strip: int = 8192  # model-grid columns predicted at a time (wider slides go in strips): bounds memory
    device: str = "auto"
