"""Snakemake wrapper: train the segmentation model."""

from pathlib import Path

from wsiseg.logs import log_to
from wsiseg.params import from_mapping
from wsiseg.train import TrainParams, train_model

with log_to(snakemake.log[0]):
    params = from_mapping(TrainParams, {**snakemake.params.train, "seed": snakemake.params.seed}, "train")
    train_model(
        snakemake.params.stores["train"],
        snakemake.params.stores["val"],
        Path(snakemake.output.checkpoint).parent,
        params,
        threads=snakemake.threads,
        **snakemake.params.card,
    )
