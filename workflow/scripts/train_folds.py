"""Snakemake wrapper: summarise the cross-validation folds of a model."""

from wsiseg.train import summarise_folds
from wsiseg.utils.logs import log_to

with log_to(snakemake.log[0]):
    summarise_folds(snakemake.input.metrics, snakemake.output.metrics, snakemake.output.curves, snakemake.output.card)
