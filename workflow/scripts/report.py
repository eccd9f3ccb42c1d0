"""Snakemake wrapper: submission, metrics and overlays."""

from pathlib import Path

from wsiseg.logs import log_to
from wsiseg.report import make_report

with log_to(snakemake.log[0]):
    ids = snakemake.params.slide_ids
    make_report(
        dict(zip(ids, snakemake.input.predictions)),
        dict(zip(ids, snakemake.input.slides)),
        snakemake.params.splits,
        snakemake.output.submission,
        snakemake.output.metrics,
        Path(snakemake.output.overlays[0]).parent,
        Path(snakemake.output.geojson[0]).parent,
        **snakemake.params.report,
    )
