"""One parameter set per stage, as plain frozen dataclasses: config ``demo``, ``convert``, ``patches``, ``train``,
``predict`` and ``report``.

Each field's default equals the config schema's (``config.schema.yaml``, tested), and each stage function takes
its set, so the workflow, the CLI (``wsiseg <stage> --help`` builds its flags from these classes and the schema's
help) and Python share one definition.  Kept apart from the stage code so that the CLI, the config checks and
anything else that only needs the settings never import torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

from wsiseg.readers.limits import MAX_DECODED_PIXELS

P = TypeVar("P")


def with_options(params: P, options: Mapping[str, Any]) -> P:
    """``params`` with the fields named in ``options`` replaced (a stage function's single-field keywords,
    ``convert_slide(..., chunk=256)``); an unknown name is a TypeError listing the known ones, as for any call."""
    if not options:
        return params
    names = {f.name for f in dataclasses.fields(params)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unexpected option(s) {unknown} for {type(params).__name__}; known: {sorted(names)}")
    return dataclasses.replace(params, **options)


DEFAULT_LOSS = {"dice": 1.0, "bce": 1.0}


# train keys that never change what a run learns (results are identical for any num_workers:
# tests/safety/test_resume.py): the workflow keeps them out of the train rule's params, so editing them (or a
# new default) never retrains; the train script reads them from the config.  `devices` stays a param:
# more GPUs make a larger effective batch.  The experiment tracker's keys only say where the run is logged.
UNTRACKED_KEYS = ("num_workers", "resume", "logger", "tracking_uri", "experiment")
# train keys an interrupted run may resume across (wsiseg.train.fingerprint leaves them out)
RUNTIME_KEYS = (*UNTRACKED_KEYS, "devices")


@dataclass(frozen=True)
class DemoSpec:
    """Parameters of the synthetic slide set."""

    slides: int = 4
    height: int = 3000
    width: int = 4000
    radius_min: int = 45
    radius_max: int = 100
    seed: int = 0
    mpp: float = 0.5  # micrometres per pixel, written as TIFF resolution tags (a 20x scan)


@dataclass(frozen=True)
class ConvertParams:
    """How a source slide becomes a slide store (config ``convert``; see :func:`wsiseg.convert.convert_slide`)."""

    chunk: int = 512  # chunk side of every pyramid level
    compression: str = "lz4"  # Blosc codec (zstd, lz4, zlib, blosclz) or jpeg (compact, lossy image pyramid)
    level: int = 5  # Blosc compression level
    jpeg_quality: int = 90
    jpeg_tile_copy: bool = True  # jpeg: copy a tiled JPEG TIFF's tiles as level 0 instead of re-encoding
    shuffle: str = "bit"  # Blosc shuffle: bit, byte or none
    uint16: str = "scale"  # non-8-bit pixels to uint8: scale (/257) or percentile (stretch ``percentiles``)
    percentiles: tuple[float, ...] = (0.5, 99.5)
    channels: tuple[int, ...] | None = None  # three channel indices used as R, G, B
    palette: Any = None  # RGB mask colours -> class indices (mapping or list of colours)
    mask_threshold: int = 0  # mask images: foreground above this value
    allow_empty_mask: bool = False  # a train/val annotation without foreground warns instead of failing
    default_mpp: float | None = None  # pixel size for slides whose metadata states none
    max_decoded_pixels: int = MAX_DECODED_PIXELS  # largest PNG/JPEG (decoded whole) accepted
    reader: str = "auto"  # auto, tifffile, openslide or dicom
    workers: int | None = None  # decode/compress threads (not in config: the job's threads; None = every core)


@dataclass(frozen=True)
class PatchParams:
    """How patches are cut and which are kept."""

    size: int = 128
    downscale: float = 2.0  # level-0 pixels per patch pixel, for slides read by pixels (``mpp`` None)
    mpp: float | None = None  # micrometres per patch pixel: each slide's downscale is mpp / its own pixel size
    stride: int | None = None  # in patch pixels; default: size // 2 (half-overlapping patches)
    min_coverage: float = 0.1
    max_coverage: float = 0.9
    negative_ratio: float = 0.5  # tissue-only negatives kept per positive patch
    negatives: int | None = None  # tissue-only negatives per slide (overrides negative_ratio)
    random: int = 0  # further grid cells drawn uniformly at random, whatever they hold
    min_tissue: float = 0.25  # tissue share a negative patch needs
    tissue_method: str = "otsu"  # saturation | otsu | otsu_gray | fluorescence | auto (see wsiseg.imaging.tissue)
    tissue_saturation: float = 0.08  # fixed threshold, and the floor of the Otsu threshold
    classes: int | None = None  # 1 = binary, k >= 2 = labels 0..k-1; None: from the label image
    seed: int = 0


@dataclass(frozen=True)
class TrainParams:
    """Model and optimisation settings (all plain values, as in config ``train``)."""

    arch: str = "Unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = None  # None | named (imagenet, ...) | a weights file (wsiseg.nn.encoders)
    encoder_kwargs: dict[str, Any] | None = None  # timm keyword arguments of tu- encoders
    normalize: dict[str, Any] | None = None  # {mean, std} (0-1); None: the weights' own
    # None: the architecture's default (wsiseg.config.networks.NETWORKS; Unet: 4 and (128, 64, 32, 16))
    encoder_depth: int | None = None
    decoder_channels: tuple[int, ...] | None = None
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
    freeze_encoder: bool = False  # train the decoder and head only (wsiseg.nn.module.SegmentationModule)
    unfreeze_blocks: int = 0  # with freeze_encoder: the last N encoder blocks learn too
    augment_on: str = "auto"  # loader | device | auto: device on a GPU when it has every transform listed
    contour_weight: float = 0.0  # > 0: a contour head beside the foreground (DCAN), weighted so in the loss
    num_workers: int | str = (
        "auto"  # auto: 0 on CPU; on a GPU one per core but one, at most 8 (wsiseg.train.loader_workers)
    )
    accelerator: str = "auto"
    devices: int | str = "auto"
    precision: str = "auto"  # auto: 16-mixed on a GPU, 32 on CPU
    resume: bool = True  # continue an interrupted run from lightning/checkpoints/last.ckpt
    logger: str = "csv"  # csv | tensorboard | mlflow: a tracker beside the CSV log (wsiseg.utils.tracking)
    tracking_uri: str | None = None  # MLflow URI or TensorBoard folder; None = <results>/mlruns or /tensorboard
    experiment: str = "wsiseg"  # MLflow experiment of the runs
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
    contour_threshold: float = 0.5  # split_objects contour: contour probability above which a pixel is an edge
    split_min_distance_um: float = 3.0  # closest two object centres may be, in um (level-0 mpp known)
    split_min_distance_px: int = 12  # the same in level-0 px, used when the slide's pixel size is unknown
    chunk: int = 512
    prefetch: int = 4  # batches read ahead by the background reader
    strip: int = 8192  # model-grid columns predicted at a time (wider slides go in strips): bounds memory
    device: str = "auto"


@dataclass(frozen=True)
class ReportParams:
    """How predictions are scored and exported (config ``report``; see :func:`wsiseg.report.make_report`)."""

    sample_submission: str | None = None  # Kaggle sample submission CSV: fixes the ids and row order
    object_iou: float = 0.5  # IoU above which a predicted and a true object match
    class_name: str = "foreground"  # name of a binary model's class (GeoJSON classification)
    object_type: str = "annotation"  # QuPath object type of the GeoJSON objects: annotation or detection
    class_names: tuple[str, ...] | None = None  # multi-class: a name per class index, 0 = background
    dicom_seg: bool = False  # also write each test slide's mask as a DICOM Segmentation
    dicom_seg_max_side: int = 8192  # the DICOM Segmentation's level: the finest at most this many px a side
    review_top: int = 20  # `wsiseg review`: the most uncertain regions per slide, for a pathologist in QuPath
    review_tile: int = 512  # their side, in level-0 pixels


DICOM_SEG_KEYS = ("dicom_seg", "dicom_seg_max_side")
"""Config ``report`` keys of the per-slide DICOM Segmentation jobs (``wsiseg dicomseg``), not of the report."""
REVIEW_KEYS = ("review_top", "review_tile")
"""Config ``report`` keys of the per-slide review jobs (``wsiseg review``, the workflow's ``review`` target)."""
SLIDE_JOB_KEYS = DICOM_SEG_KEYS + REVIEW_KEYS
"""Config ``report`` keys of per-slide jobs, not of the report itself (editing them does not rerun it)."""
