"""Stage ``predict``: tiled, blended inference over a slide store, streamed to zarr.

- :mod:`~wsiseg.predict.stage`: :func:`predict_slide` and :func:`predict_many`, the stage functions;
- :mod:`~wsiseg.predict.plan`: where the tiles lie (grid, tissue filter, strips, batches per tile row);
- :mod:`~wsiseg.predict.ensemble`: the models (device, checkpoint ensemble, TTA, GPU precast);
- :mod:`~wsiseg.predict.pipeline`: normaliser, blender, band writer and the threads that keep the model busy.
"""

from wsiseg.config.params import PredictParams
from wsiseg.predict.ensemble import (
    TTA_OPS,
    average_probabilities,
    forward_views,
    load_ensemble,
    precast,
    precast_checked,
    predict_batch,
    probabilities,
    resolve_device,
)
from wsiseg.predict.pipeline import TileNormaliser, blend_window
from wsiseg.predict.plan import TilePlan
from wsiseg.predict.stage import predict_many, predict_slide

__all__ = [
    "TTA_OPS",
    "PredictParams",
    "TileNormaliser",
    "TilePlan",
    "average_probabilities",
    "blend_window",
    "forward_views",
    "load_ensemble",
    "precast",
    "precast_checked",
    "predict_batch",
    "predict_many",
    "predict_slide",
    "probabilities",
    "resolve_device",
]
