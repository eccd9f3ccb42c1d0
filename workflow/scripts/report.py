"""Snakemake wrapper: submission, metrics and overlays."""

from pathlib import Path

from wsiseg.config.params import ReportParams
from wsiseg.config.schema import from_mapping
from wsiseg.report import make_report
from wsiseg.utils.logs import log_to

with log_to(snakemake.log[0]):
    make_report(
        snakemake.params.predictions,
        snakemake.params.slides,
        snakemake.params.splits,
        snakemake.output.submission,
        snakemake.output.metrics,
        Path(snakemake.output.overlays),
        Path(snakemake.output.geojson),
        params=from_mapping(ReportParams, snakemake.params.report, "report"),
        groups=snakemake.params.groups or None,
        scores_html=snakemake.output.scores,
        provenance=snakemake.output.provenance,
        config_hash=snakemake.params.config_hash,
    )
