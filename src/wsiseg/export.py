"""Stage ``export``: a trained model folder as a network file anyone can run, without wsiseg.

``export_model`` writes a new folder holding

- the network: TorchScript ``model.pt`` (``torch.jit.trace``; ``torch.jit.load`` in Python, or libtorch) or
  ONNX ``model.onnx`` (``torch.onnx.export(dynamo=True)``, opset :data:`OPSET`; onnxruntime, OpenVINO,
  TensorRT, ...), with a dynamic batch, height and width where the network runs at other sizes than its
  training patches;
- ``model.json``: the model card, copied, listing the network file (with its sha256) as its checkpoint, and
  extended with ``export``: format, file, sha256, opset, what goes in (float32 NCHW RGB normalised with
  ``normalize``'s mean/std, 0-1 units) and comes out (logits; ``activation`` says how they become
  probabilities), the tolerance and the largest difference measured, and the checkpoint's ``hparams`` that
  predict reads.

At export the network file is loaded back (as predict loads it: :class:`ExportedModel`) and its logits on a
random batch must equal the checkpoint's within :data:`TOLERANCE`, or nothing is written.

``predict.model`` accepts an exported folder like any model folder: :func:`load_exported` gives predict an
:class:`ExportedModel`, which runs the exported network (float32, as checked here) and carries the card's
``hparams``.
"""

from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from wsiseg.errors import ConfigError, ModelError
from wsiseg.modelcard import CARD, card_listing, check_checkpoint, file_sha256, resolve_model
from wsiseg.nn.encoders import IMAGENET
from wsiseg.nn.module import load_model
from wsiseg.utils.io import atomic_path

log = logging.getLogger(__name__)

FORMATS = {"torchscript": "model.pt", "onnx": "model.onnx"}
# the ONNX exporter's own opset (torch's translations are written for it; later ones are converted up): read by
# onnxruntime >= 1.14, OpenVINO, TensorRT >= 8.6
OPSET = 18
# largest |logit difference| between the exported network and the checkpoint: 1e-3 moves a probability by at
# most 2.5e-4, well below the 1/255 steps prediction stores keep
TOLERANCE = 1e-3
# the checkpoint's hyper-parameters predict reads (classes, scale, stain normaliser, input normalisation, ...)
PREDICT_HPARAMS = tuple("classes mpp downscale patch_size stain normalize contour_weight arch encoder".split())


class ExportedModel(torch.nn.Module):
    """An exported network file as predict uses a model: ``model(x)`` gives the logits of the normalised
    (n, 3, h, w) batch ``x`` (on ``x``'s device), ``model.hparams`` the checkpoint's (:data:`PREDICT_HPARAMS`).

    Runs in float32, autocast or not: the precision its outputs were checked in at export.  ONNX networks
    run in onnxruntime on the CPU (numpy in, numpy out)."""

    def __init__(self, path: str | Path, hparams: Mapping[str, Any]):
        super().__init__()
        self.path = Path(path)
        self.hparams = dict(hparams)
        self.net, self.session = None, None
        if self.path.suffix == ".onnx":
            try:
                import onnxruntime
            except ImportError:
                raise ModelError(f"{path}: an ONNX model needs onnxruntime (pip install 'wsiseg[export]')") from None
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        else:
            with _quiet_jit():
                self.net = torch.jit.load(str(path), map_location="cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            if self.net is not None:
                return self.net(x.float())
            inputs = {self.session.get_inputs()[0].name: x.detach().float().cpu().contiguous().numpy()}
            return torch.from_numpy(self.session.run(None, inputs)[0]).to(x.device)

    def __deepcopy__(self, memo: dict) -> ExportedModel:
        # the exported network is fixed: a copy (predict's precast one, with weights cast for autocast) is itself
        return self


def load_exported(path: str | Path) -> ExportedModel | None:
    """The exported network ``path`` as an :class:`ExportedModel` when the model card beside it lists it as
    its export; None for anything else (a checkpoint).  A ``.onnx`` file without its card is a
    :class:`ModelError`: its hparams (classes, scale, normalisation) are in the card."""
    found = card_listing(path)
    export = found[1].get("export") if found else None
    if isinstance(export, dict) and export.get("file") == Path(path).name:
        return ExportedModel(path, export["hparams"])
    if Path(path).suffix == ".onnx":
        raise ModelError(f"{path}: an exported model is used with its {CARD}: give the folder `wsiseg export` wrote")
    return None


def export_model(model_dir: str | Path, out_dir: str | Path | None = None, format: str = "onnx") -> Path:
    """Export the model in ``model_dir`` (a folder written by ``wsiseg train``) as ``format`` (``torchscript``
    or ``onnx``) into ``out_dir`` (default: ``{model_dir}-{format}`` beside it); returns ``out_dir``.

    The exported network's logits must equal the checkpoint's within :data:`TOLERANCE` on a random batch
    (at the training patch size and, for networks that take other sizes, twice as high), else a
    :class:`ModelError` and nothing is written."""
    if format not in FORMATS:
        raise ConfigError(f"export format {format!r}: choose from {list(FORMATS)}")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: not a model folder (export takes the folder `wsiseg train` wrote)")
    spec = resolve_model(model_dir, key="model")
    card = spec.cards[str(model_dir)]
    if card.get("export"):
        raise ModelError(f"{model_dir}: is already an exported model ({card['export'].get('format')})")
    if len(spec.checkpoints) != 1:
        raise ModelError(
            f"{model_dir}: lists {len(spec.checkpoints)} checkpoints (a cross-validation ensemble); "
            "export one model folder at a time (each fold's)"
        )
    checkpoint = spec.checkpoints[0]
    source = spec.provenance(verify=True)["checkpoints"][0]  # a checkpoint its card does not describe: refused
    model = load_model(checkpoint)
    check_checkpoint(checkpoint, model.hparams)
    size = int(model.hparams["patch_size"])
    shapes = [(2, 3, size, size)]
    dynamic = _takes_other_sizes(model, size)
    if dynamic:
        shapes.append((1, 3, 2 * size, size))
    out = Path(out_dir) if out_dir is not None else model_dir.with_name(f"{model_dir.name}-{format}")
    with atomic_path(out, stage="export", inputs=(checkpoint, model_dir / CARD), folder=True) as tmp:
        tmp.mkdir(parents=True)
        file = FORMATS[format]
        example = torch.randn(shapes[0], generator=torch.Generator().manual_seed(0))
        if format == "onnx":
            _write_onnx(model.net, example, tmp / file, dynamic)
        else:
            _write_torchscript(model.net, example, tmp / file)
        hparams = {k: model.hparams.get(k) for k in PREDICT_HPARAMS}
        hparams["normalize"] = dict(hparams["normalize"] or IMAGENET)
        measured = max_difference(model, ExportedModel(tmp / file, hparams), shapes)
        if not measured <= TOLERANCE:  # NaN too
            raise ModelError(
                f"{model_dir}: the exported {format} network's logits differ from the checkpoint's by up to "
                f"{measured:.3g} (tolerance {TOLERANCE:g}); nothing written"
            )
        digest = file_sha256(tmp / file)
        exported = {
            **card,
            "name": out.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "checkpoints": [{"path": file, "sha256": digest}],
            "export": {
                "format": format,
                "file": file,
                "sha256": digest,
                "opset": OPSET if format == "onnx" else None,
                "exporter": "torch.onnx.export(dynamo=True)" if format == "onnx" else "torch.jit.trace",
                "torch_version": torch.__version__.split("+")[0],
                "input": "float32 NCHW normalised RGB",
                "normalize": hparams["normalize"],  # (rgb / 255 - mean) / std, per channel
                "dynamic": ["batch", "height", "width"] if dynamic else ["batch"],
                "output": "logits",
                "activation": _activation(hparams),
                "tolerance": TOLERANCE,
                "max_abs_difference": measured,
                "checked_on": [list(s) for s in shapes],
                "hparams": hparams,
                "source": {"model": str(model_dir), "checkpoint": source["path"], "sha256": source["sha256"]},
            },
        }
        (tmp / CARD).write_text(json.dumps(exported, indent=2, default=str))
    log.info("export %s: %s in %s (max |logit difference| %.3g)", model_dir, format, out, measured)
    return out


def max_difference(model: torch.nn.Module, exported: torch.nn.Module, shapes: list[tuple[int, ...]]) -> float:
    """Largest |difference| between the two models' logits on seeded random batches of ``shapes``."""
    noise = torch.Generator().manual_seed(1)
    worst = 0.0
    with torch.inference_mode():
        for shape in shapes:
            x = torch.randn(shape, generator=noise)
            worst = max(worst, (model(x).float() - exported(x).float()).abs().max().item())
    return worst


def _takes_other_sizes(model: torch.nn.Module, size: int) -> bool:
    """Whether the checkpoint runs on an input twice as high as its training patches (a network with
    fixed-size position embeddings does not): then the export gets a dynamic height and width."""
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, 2 * size, size))
    except (RuntimeError, ValueError, AssertionError):  # what networks raise on a size they cannot take
        return False
    return True


def _activation(hparams: Mapping[str, Any]) -> str:
    """How the logits become probabilities (as predict does)."""
    if hparams.get("contour_weight"):
        return "sigmoid per channel (foreground, contour)"
    return "sigmoid" if int(hparams.get("classes") or 1) == 1 else "softmax over channels"


def _write_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path, dynamic: bool) -> None:
    """The torch.export-based exporter (torch's default and its maintained one; the TorchScript-based one
    is deprecated); weights inside the file (no external data: one file to share, below ONNX's 2 GB)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ModelError(f"export --format onnx needs {err.name} (pip install 'wsiseg[export]')") from None
    axis = torch.export.Dim.DYNAMIC
    shapes = ({0: axis, 2: axis, 3: axis} if dynamic else {0: axis},)
    # the exporter's optimiser logs every pass at INFO: kept to warnings
    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        program = torch.onnx.export(
            net,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=shapes,
            verbose=False,
        )
        program.save(str(path), external_data=False)
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def _write_torchscript(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Traced (the network's control flow does not depend on its input's values; shapes stay symbolic:
    the export check runs it at a second size)."""
    with _quiet_jit(), torch.no_grad():
        torch.jit.save(torch.jit.trace(net, example), str(path))


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch.jit's deprecation warnings, once per call, say nothing the export format's user chose to ignore:
    TorchScript is the format libtorch (C++) loads; ONNX is the recommended one (docs/how-to/export.md)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield
