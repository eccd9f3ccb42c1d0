"""``wsiseg`` command line: one subcommand per workflow stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .params import add_arguments, from_args


def _demo(args) -> None:
    from .demo import DemoSpec, generate_demo

    samples = generate_demo(args.outdir, DemoSpec(slides=args.slides, height=args.height, width=args.width, seed=args.seed))
    print(f"wrote {len(samples)} slides and {Path(args.outdir) / 'samples.csv'}")


def _convert(args) -> None:
    from .convert import convert_slide
    from .masks import load_palette

    palette = load_palette(args.palette) if args.palette else None
    convert_slide(
        args.image, args.out, mask=args.mask, slide_id=args.slide_id, chunk=args.chunk, compression=args.compression,
        level=args.level, shuffle=args.shuffle, uint16=args.uint16, percentiles=args.percentiles, channels=args.channels, palette=palette,
        mask_threshold=args.mask_threshold, workers=args.workers,
    )


def _patches(args) -> None:
    from .patches import PatchParams, extract_patches

    table = extract_patches(args.slide, args.out_zarr, args.out_csv, from_args(PatchParams, args), args.out_tissue)
    print(f"kept {len(table)} patches: {table['reason'].value_counts().to_dict()}")


def _train(args) -> None:
    from .train import TrainParams, train_model

    metrics = train_model(args.train, args.val, args.out_dir, from_args(TrainParams, args, skip=("extra",)), threads=args.threads)
    print(metrics.to_string(index=False))


def _predict(args) -> None:
    from .predict import PredictParams, predict_slide

    predict_slide(args.slide, args.checkpoints, args.out, from_args(PredictParams, args))


def _report(args) -> None:
    from .report import make_report
    from .samples import read_samples
    from .layout import find_store

    samples = read_samples(args.samples, check_files=False)
    predictions = {s: p for s in samples.index if (p := find_store(args.predictions, s)) is not None}
    if not predictions:
        raise SystemExit(f"no predictions for the slides of {args.samples} in {args.predictions}")
    slides = {s: find_store(args.slides, s) for s in predictions}
    missing = sorted(s for s, p in slides.items() if p is None)
    if missing:
        raise SystemExit(f"no converted store in {args.slides} for predicted slide(s) {missing[:5]}")
    table = make_report(
        predictions,
        slides,
        samples["split"].to_dict(),
        Path(args.out_dir) / "submission.csv",
        Path(args.out_dir) / "metrics.csv",
        Path(args.out_dir) / "overlays",
        Path(args.out_dir) / "geojson",
        sample_submission=args.sample_submission,
        object_iou=args.object_iou,
        class_name=args.class_name,
        class_names=args.class_names,
        groups=samples["group"].to_dict() if "group" in samples else None,
    )
    print(table.to_string(index=False))


def _samples(args) -> None:
    from .datasets import dataset_samples

    dataset_samples(args.format, args.root, args.val_fraction, args.seed).to_csv(sys.stdout, index=False)


def build_parser() -> argparse.ArgumentParser:
    """The ``wsiseg`` argument parser with one subcommand per stage."""
    from .datasets import FORMATS as DATASET_FORMATS
    from .datasets import LAYOUTS

    DATASET_HELP = "".join(f"\n  {name:14} {text}" for name, text in LAYOUTS.items())
    from .patches import PatchParams
    from .predict import PredictParams
    from .train import TrainParams

    parser = argparse.ArgumentParser(
        prog="wsiseg",
        description="Semantic segmentation of whole-slide images. Each subcommand runs one stage of the "
        "Snakemake workflow (run the whole chain with `snakemake --cores N`).",
    )
    parser.add_argument("--version", action="version", version=f"wsiseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    p = sub.add_parser("demo", help="write the synthetic demo slide set (TIFFs, RLE table, GeoJSON, sample sheet)")
    p.add_argument("outdir")
    p.add_argument("--slides", type=int, default=4)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--width", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "samples", help="write a sample sheet for a dataset in its download layout (to stdout)",
        description="Write the sample sheet (slide_id,image,mask,split[,group]) of a dataset as downloaded, e.g.\n"
        "  wsiseg samples --format dsb2018 data/dsb2018 > samples.csv\n"
        "  snakemake --cores all --configfile config/examples/dsb2018.yaml\n\nlayouts:" + DATASET_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("root", help="dataset folder")
    p.add_argument("--format", required=True, choices=list(DATASET_FORMATS),
                   help="download layout of ROOT (README: 'Datasets in their download layout')")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of labelled slides used for validation")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_samples)

    p = sub.add_parser("convert", help="TIFF/PNG slide (+ mask) -> OME-NGFF zarr pyramid")
    p.add_argument("image")
    p.add_argument("out", help="output .zarr directory")
    p.add_argument("--mask", help="RLE table (.csv), GeoJSON (.json/.geojson) or Aperio (.xml) polygons, "
                   "mask image, or a folder of one mask image per object")
    p.add_argument("--slide-id", help="id of the slide (row id in an RLE table); default: image file stem")
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--compression", default="lz4", choices=["zstd", "lz4", "zlib", "blosclz"], help="Blosc codec")
    p.add_argument("--level", type=int, default=5, help="compression level")
    p.add_argument("--shuffle", default="bit", choices=["bit", "byte", "none"], help="Blosc pre-filter")
    p.add_argument("--uint16", default="scale", choices=["scale", "percentile"],
                   help="non-8-bit pixels to uint8: divide by 257, or stretch --percentiles of a low-res sample")
    p.add_argument("--percentiles", type=float, nargs=2, default=[0.5, 99.5], metavar=("LOW", "HIGH"))
    p.add_argument("--channels", type=int, nargs=3, metavar=("R", "G", "B"), help="channel indices to use as RGB")
    p.add_argument("--palette", help='RGB mask colours -> classes: JSON (\'{"#ff0000": 1}\' or [[r,g,b], ...]) or a .json file')
    p.add_argument("--mask-threshold", type=int, default=0,
                   help="mask images: a pixel is foreground when a channel exceeds this value (e.g. 127 for JPEG masks)")
    p.add_argument("--workers", type=int, help="decode/compress threads (default: all available CPUs)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("patches", help="extract training patches filtered by mask coverage")
    p.add_argument("slide", help="converted slide .zarr")
    p.add_argument("out_zarr")
    p.add_argument("out_csv")
    p.add_argument("--out-tissue", help="write the low-resolution tissue mask to this PNG")
    add_arguments(p, PatchParams)
    p.set_defaults(func=_patches)

    p = sub.add_parser("train", help="train a segmentation-models-pytorch model with Lightning")
    p.add_argument("--train", nargs="+", required=True, help="training patch stores")
    p.add_argument("--val", nargs="+", required=True, help="validation patch stores")
    p.add_argument("--out-dir", required=True, help="writes model.ckpt, metrics.csv, curves.png")
    p.add_argument("--threads", type=int, default=None)
    add_arguments(p, TrainParams, skip=("extra",))
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="tiled, blended inference over a converted slide")
    p.add_argument("slide", help="converted slide .zarr")
    p.add_argument("out", help="output prediction .zarr")
    p.add_argument("checkpoints", nargs="+", help="model.ckpt from train (several: ensemble mean)")
    add_arguments(p, PredictParams)
    p.set_defaults(func=_predict)

    p = sub.add_parser("report", help="RLE submission, per-slide metrics, overlays and GeoJSON objects")
    p.add_argument("--samples", required=True, help="sample sheet CSV")
    p.add_argument("--slides", default="results/zarr", help="folder of converted slide stores")
    p.add_argument("--predictions", default="results/predictions", help="folder of prediction stores")
    p.add_argument("--out-dir", default="results")
    p.add_argument("--sample-submission", help="Kaggle sample submission CSV: fixes the ids and row order")
    p.add_argument("--object-iou", type=float, default=0.5, help="IoU above which predicted and true objects match")
    p.add_argument("--class-name", default="foreground", help="class name of the exported GeoJSON objects")
    p.add_argument("--class-names", nargs="+", metavar="NAME", help="multi-class: name of class 0 (background), 1, 2, ...")
    p.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wsiseg`` console script."""
    from .logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"wsiseg {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
