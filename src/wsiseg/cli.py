"""``wsiseg`` command line: one subcommand per workflow stage."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from wsiseg import __version__
from wsiseg.config.schema import add_arguments, from_args


def _demo(args) -> None:
    from wsiseg.demo import DemoSpec, generate_demo

    samples = generate_demo(
        args.outdir, DemoSpec(slides=args.slides, height=args.height, width=args.width, seed=args.seed)
    )
    print(f"wrote {len(samples)} slides and {Path(args.outdir) / 'samples.csv'}")


def _convert(args) -> None:
    from wsiseg.annotations.images import load_palette
    from wsiseg.config.params import ConvertParams
    from wsiseg.convert import convert_slide

    palette = load_palette(args.palette) if args.palette else None
    params = replace(from_args(ConvertParams, args, skip=("palette", "workers")), palette=palette, workers=args.workers)
    convert_slide(
        args.image,
        args.out,
        mask=args.mask,
        slide_id=args.slide_id,
        params=params,
        require_foreground=args.require_foreground,
        mpp=args.mpp,
    )


def _info(args) -> None:
    import json

    from wsiseg.info import describe, format_info

    for path in args.paths:
        info = describe(path)
        print(json.dumps(info) if args.json else format_info(info))


def _patches(args) -> None:
    from wsiseg.patches import PatchParams, extract_patches

    table = extract_patches(args.slide, args.out_zarr, args.out_csv, from_args(PatchParams, args), args.out_tissue)
    print(f"kept {len(table)} patches: {table['reason'].value_counts().to_dict()}")


def _train(args) -> None:
    from wsiseg.train import TrainParams, train_model

    metrics = train_model(
        args.train, args.val, args.out_dir, from_args(TrainParams, args, skip=("extra",)), threads=args.threads
    )
    print(metrics.to_string(index=False))


def _predict(args) -> None:
    from wsiseg.predict import PredictParams, predict_slide

    predict_slide(
        args.slide,
        args.checkpoints,
        args.out,
        from_args(PredictParams, args),
        class_names=args.class_names,
        class_name=args.class_name,
    )


def _report(args) -> None:
    from wsiseg.config.params import SLIDE_JOB_KEYS, ReportParams
    from wsiseg.report import make_report
    from wsiseg.samples.sheet import read_samples
    from wsiseg.store.layout import find_store

    samples = read_samples(args.samples, check_files=False)
    found = {s: find_store(args.predictions, s) for s in samples.index}
    if all(p is None for p in found.values()):
        raise SystemExit(f"no predictions for the slides of {args.samples} in {args.predictions}")
    # as the workflow: every val and test slide is reported (one without a store stays in, at the path predict
    # writes, so make_report stops naming it instead of a report that silently lacks it); a train slide when
    # it was predicted (predict.model predicts every slide)
    split = samples["split"].to_dict()
    predictions = {
        s: p if p is not None else Path(args.predictions) / f"{s}.zarr"
        for s, p in found.items()
        if p is not None or split[s] in ("val", "test")
    }
    slides = {s: find_store(args.slides, s) for s in predictions}
    missing = sorted(s for s, p in slides.items() if p is None and found[s] is not None)
    if missing:
        raise SystemExit(f"no converted store in {args.slides} for predicted slide(s) {missing[:5]}")
    slides = {s: p if p is not None else Path(args.slides) / f"{s}.zarr" for s, p in slides.items()}
    table = make_report(
        predictions,
        slides,
        samples["split"].to_dict(),
        Path(args.out_dir) / "submission.csv",
        Path(args.out_dir) / "metrics.csv",
        Path(args.out_dir) / "overlays",
        Path(args.out_dir) / "geojson",
        params=from_args(ReportParams, args, skip=SLIDE_JOB_KEYS),
        groups=samples["group"].to_dict() if "group" in samples else None,
        scores_html=Path(args.out_dir) / "scores.html",
    )
    print(table.to_string(index=False))


def _dicom_seg(args) -> None:
    from wsiseg.dicomseg import write_dicom_seg

    out = write_dicom_seg(
        args.prediction,
        args.out,
        source=args.source,
        class_name=args.class_name,
        class_names=args.class_names,
        max_side=args.max_side,
        mpp=args.mpp,
    )
    print(f"wrote {out}")


def _review(args) -> None:
    from wsiseg.review import write_reviews

    names = {"class_name": args.class_name, "class_names": args.class_names}
    for path in write_reviews(args.predictions, args.out_dir, args.top, args.tile, **names):
        print(f"wrote {path}")


def _review_args(p: argparse.ArgumentParser) -> None:
    from wsiseg.config.schema import schema_section

    section = schema_section("report")
    p.add_argument("predictions", nargs="+", help="prediction stores (.zarr) from `wsiseg predict`")
    p.add_argument("--out-dir", default="results/review", help="one <slide>.geojson here (default: results/review)")
    for flag, key in (("--top", "review_top"), ("--tile", "review_tile")):
        spec = section[key]
        p.add_argument(
            flag, type=int, default=spec["default"], help=f"{spec['description']} (default: {spec['default']})"
        )
    p.add_argument("--class-name", default="foreground", help="classification of a binary model's objects")
    p.add_argument("--class-names", nargs="+", metavar="NAME", help="multi-class: name of class 0, 1, 2, ...")


def _samples(args) -> None:
    from wsiseg.samples.layouts import dataset_samples

    dataset_samples(args.format, args.root, args.val_fraction, args.seed).to_csv(sys.stdout, index=False)


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", help="folder for the slides, masks and samples.csv")
    p.add_argument("--slides", type=int, default=4, help="number of slides (default: 4)")
    p.add_argument("--height", type=int, default=3000, help="slide height in px (default: 3000)")
    p.add_argument("--width", type=int, default=4000, help="slide width in px (default: 4000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _samples_args(p: argparse.ArgumentParser) -> None:
    from wsiseg.samples.layouts import FORMATS as DATASET_FORMATS
    from wsiseg.samples.layouts import LAYOUTS

    p.description += "\n\nlayouts:" + "".join(f"\n  {name:14} {text}" for name, text in LAYOUTS.items())
    p.add_argument("root", help="dataset folder")
    p.add_argument(
        "--format",
        required=True,
        choices=list(DATASET_FORMATS),
        help="download layout of ROOT (docs/how-to/public-datasets.md)",
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of labelled slides used for validation")
    p.add_argument("--seed", type=int, default=0, help="random seed of the train/val draw (default: 0)")


def _convert_args(p: argparse.ArgumentParser) -> None:
    from wsiseg.config.params import ConvertParams

    p.add_argument(
        "image",
        help="slide: TIFF/BigTIFF/OME-TIFF/SVS, a vendor format OpenSlide reads (NDPI, MRXS, SCN, BIF, ...), "
        "a DICOM WSI (folder of .dcm files or one file), PNG or JPEG",
    )
    p.add_argument("out", help="output .zarr directory")
    p.add_argument(
        "--mask",
        help="RLE table (.csv), GeoJSON (.json/.geojson) or Aperio (.xml) polygons, "
        "mask image, or a folder of one mask image per object",
    )
    p.add_argument("--slide-id", help="id of the slide (row id in an RLE table); default: image file stem")
    # every key of config `convert:`, with the schema's description and choices
    add_arguments(p, ConvertParams, skip=("palette", "workers"), section="convert")
    p.add_argument(
        "--palette", help="RGB mask colours -> classes: JSON ('{\"#ff0000\": 1}' or [[r,g,b], ...]) or a .json file"
    )
    p.add_argument(
        "--require-foreground",
        action="store_true",
        help="the annotation must mark some foreground (the workflow sets this for train/val slides)",
    )
    p.add_argument("--workers", type=int, help="decode/compress threads (default: all available CPUs)")
    p.add_argument(
        "--mpp",
        type=float,
        help="pixel size in micrometres per pixel: overrides the slide's metadata "
        "(the sample sheet's `mpp` column in the workflow)",
    )


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="slide image (TIFF, SVS, OME-TIFF, PNG, ...) or wsiseg .zarr store"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per path instead of text")


def _patches_args(p: argparse.ArgumentParser) -> None:
    from wsiseg.patches import PatchParams

    p.add_argument("slide", help="converted slide .zarr")
    p.add_argument("out_zarr", help="output patch store (.zarr)")
    p.add_argument("out_csv", help="output patch index table (.csv)")
    p.add_argument("--out-tissue", help="write the low-resolution tissue mask to this PNG")
    add_arguments(p, PatchParams, section="patches")


def _train_args(p: argparse.ArgumentParser) -> None:
    from wsiseg.config.params import TrainParams

    p.add_argument("--train", nargs="+", required=True, help="training patch stores")
    p.add_argument("--val", nargs="+", required=True, help="validation patch stores")
    p.add_argument("--out-dir", required=True, help="writes model.ckpt, metrics.csv, curves.png")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    add_arguments(p, TrainParams, skip=("extra",), section="train")


def _predict_args(p: argparse.ArgumentParser) -> None:
    from wsiseg.config.params import PredictParams

    p.add_argument("slide", help="converted slide .zarr")
    p.add_argument("out", help="output prediction .zarr")
    p.add_argument(
        "checkpoints",
        nargs="+",
        help="model folder from train (with model.json) or model.ckpt (several: ensemble mean)",
    )
    p.add_argument(
        "--class-names",
        nargs="+",
        default=None,
        help="a name per class index (0 = background) for the probability channels and mask labels",
    )
    p.add_argument("--class-name", default="foreground", help="name of the foreground class of a binary model")
    add_arguments(p, PredictParams, section="predict")


def _report_args(p: argparse.ArgumentParser) -> None:
    from wsiseg.config.params import SLIDE_JOB_KEYS, ReportParams

    p.add_argument("--samples", required=True, help="sample sheet CSV")
    p.add_argument("--slides", default="results/zarr", help="folder of converted slide stores")
    p.add_argument("--predictions", default="results/predictions", help="folder of prediction stores")
    p.add_argument(
        "--out-dir",
        default="results",
        help="writes submission.csv, metrics.csv, scores.html, overlays/ and geojson/ here (default: results)",
    )
    # every key of config `report:` that the report itself uses, with the schema's description and choices
    add_arguments(p, ReportParams, skip=SLIDE_JOB_KEYS, section="report")


def _dicom_seg_args(p: argparse.ArgumentParser) -> None:
    from wsiseg.config.schema import schema_section

    p.add_argument("prediction", help="prediction store (.zarr) from `wsiseg predict`")
    p.add_argument("out", help="output DICOM Segmentation (.dcm)")
    p.add_argument(
        "--source", help="the slide as the sample sheet lists it: a DICOM WSI (folder or file) is referenced"
    )
    p.add_argument("--class-name", default="foreground", help="segment label of a binary model's class")
    p.add_argument(
        "--class-names", nargs="+", metavar="NAME", help="multi-class: name of class 0 (background), 1, 2, ..."
    )
    spec = schema_section("report")["dicom_seg_max_side"]
    p.add_argument(
        "--max-side",
        type=int,
        default=spec["default"],
        help=" ".join(spec["description"].split()) + f" (default: {spec['default']})",
    )
    p.add_argument("--mpp", type=float, help="level-0 pixel size in um (default: the store's, else the DICOM source's)")


def _export(args) -> None:
    import json

    from wsiseg.export import export_model

    out = export_model(args.model_dir, args.out, args.format)
    export = json.loads((out / "model.json").read_text())["export"]
    print(
        f"wrote {out / export['file']} and {out / 'model.json'}: max |logit difference| to the checkpoint "
        f"{export['max_abs_difference']:.3g} (tolerance {export['tolerance']:g})"
    )


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model_dir", metavar="MODEL_DIR", help="model folder written by `wsiseg train` (model.json + model.ckpt)"
    )
    p.add_argument("--format", choices=("torchscript", "onnx"), default="onnx", help="network file (default: onnx)")
    p.add_argument("--out", metavar="DIR", help="the exported model's folder (default: MODEL_DIR-FORMAT beside it)")


# stage: (one-line help, description, argument builder, runner). A stage's
# arguments (and the modules they need, e.g. torch for train/predict) are only
# built when that stage is the one on the command line, so `wsiseg --help` and
# `wsiseg convert` never import torch.
STAGES: dict[str, tuple[str, str | None, Callable[[argparse.ArgumentParser], None], Callable]] = {
    "demo": ("write the synthetic demo slide set (TIFFs, RLE table, GeoJSON, sample sheet)", None, _demo_args, _demo),
    "samples": (
        "write a sample sheet for a dataset in its download layout (to stdout)",
        "Write the sample sheet (slide_id,image,mask,split[,group]) of a dataset as downloaded, e.g.\n"
        "  wsiseg samples --format dsb2018 data/dsb2018 > samples.csv\n"
        "  snakemake --cores all --configfile config/examples/dsb2018.yaml",
        _samples_args,
        _samples,
    ),
    "info": (
        "show a slide's or store's size, levels and pixel size (mpp) with its source",
        "Show what a slide file or a wsiseg store says about itself: size, pyramid levels and the pixel size\n"
        "(micrometres per pixel) with where it was read (OME-XML, Aperio MPP, TIFF resolution tags, ...), e.g.\n"
        "  wsiseg info slides/a.svs results/zarr/a.zarr",
        _info_args,
        _info,
    ),
    "convert": (
        "slide (TIFF/SVS, OpenSlide formats, DICOM WSI, PNG) + mask -> OME-NGFF zarr",
        None,
        _convert_args,
        _convert,
    ),
    "patches": ("extract training patches filtered by mask coverage", None, _patches_args, _patches),
    "train": ("train a segmentation-models-pytorch model with Lightning", None, _train_args, _train),
    "predict": ("tiled, blended inference over a converted slide", None, _predict_args, _predict),
    "export": (
        "a model folder as a TorchScript or ONNX network anyone can run (model card + input normalisation)",
        "Write a self-contained model folder: the network as TorchScript (model.pt) or ONNX (model.onnx),\n"
        "checked against the checkpoint on a random batch, and model.json extended with `export` (input\n"
        "normalisation, output, tolerance). `wsiseg predict` and `predict.model` accept the folder, e.g.\n"
        "  wsiseg export results/model --format onnx --out shared/model-onnx",
        _export_args,
        _export,
    ),
    "report": ("RLE submission, per-slide metrics, overlays and GeoJSON objects", None, _report_args, _report),
    "dicomseg": ("a predicted mask as a DICOM Segmentation (.dcm)", None, _dicom_seg_args, _dicom_seg),
    "review": (
        "the regions a pathologist should check, as QuPath GeoJSON (with the objects, editable)",
        "Write, per prediction, a QuPath GeoJSON of the most uncertain regions (locked 'Review' annotations\n"
        "ranked by the mean entropy of the probabilities) and the predicted objects (editable annotations).\n"
        "Corrected in QuPath and exported as GeoJSON, the file is the slide's mask for retraining, e.g.\n"
        "  wsiseg review results/predictions/a.zarr --top 20\n"
        "  (QuPath: import results/review/a.geojson, edit, File > Export objects as GeoJSON > a_corrected.geojson)",
        _review_args,
        _review,
    ),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``wsiseg`` argument parser with one subcommand per stage.

    With ``only``, just that subcommand gets its arguments (the others stay
    listed with their help line): the CLI builds only what it runs."""
    parser = argparse.ArgumentParser(
        prog="wsiseg",
        description="Semantic segmentation of whole-slide images. Each subcommand runs one stage of the "
        "Snakemake workflow (run the whole chain with `snakemake --cores N`). "
        "`wsiseg STAGE --help` lists a stage's options.",
    )
    parser.add_argument("--version", action="version", version=f"wsiseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name, (help_text, description, add_args, run) in STAGES.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=description or help_text[0].upper() + help_text[1:],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if only in (None, name):
            add_args(p)
        p.set_defaults(func=run)
    return parser


def _stage_in(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in STAGES else None
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wsiseg`` console script."""
    from wsiseg.errors import WsisegError
    from wsiseg.utils.logs import setup_logging

    argv = sys.argv[1:] if argv is None else list(argv)
    stage = _stage_in(argv)
    args = build_parser(stage or "").parse_args(argv)
    setup_logging()
    try:
        args.func(args)
    except (WsisegError, OSError) as err:
        # a user's input, config or file system: one line naming the file and the problem (the log above has the
        # details).  Anything else is a bug in wsiseg or a library, and keeps its traceback.
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"wsiseg {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"wsiseg {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
