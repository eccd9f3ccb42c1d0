"""Snakemake wrapper: submission, metrics and overlays."""

from pathlib import Path

from wsiseg.report import make_report
from wsiseg.utils.logs import log_to

with log_to(snakemake.log[0]):
    make_report(
        snakemake.params.predictions,
        snakemake.params.slides,
        snakemake.params.splits,
        snakemake.output.submission,
        snakemake.output.metrics,
        Path(snakemake.output.overlays[0]).parent,
        Path(snakemake.output.geojson[0]).parent,
        groups=snakemake.params.groups or None,
        scores_html=snakemake.output.scores,
        provenance=snakemake.output.provenance,
        config_hash=snakemake.params.config_hash,
        **snakemake.params.report,
    )
