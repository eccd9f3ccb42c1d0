"""Snakemake wrapper: train the segmentation model."""

from pathlib import Path

from wsiseg.config.params import UNTRACKED_KEYS
from wsiseg.config.schema import from_mapping
from wsiseg.train import TrainParams, train_model
from wsiseg.utils.gpus import claim_gpus
from wsiseg.utils.logs import log_to

with log_to(snakemake.log[0]):
    # on a multi-GPU machine, the GPU(s) no other running job holds (resources: gpu; SLURM allocates its own)
    claim_gpus(Path(snakemake.config["results"]) / ".gpus", int(snakemake.resources.get("gpu", 0)))
    # num_workers, resume and the tracker's keys come from the config, not params: editing them never retrains
    runtime = {k: snakemake.config["train"][k] for k in UNTRACKED_KEYS if k in snakemake.config["train"]}
    params = from_mapping(TrainParams, {**snakemake.params.train, **runtime, "seed": snakemake.params.seed}, "train")
    train_model(
        snakemake.params.stores["train"],
        snakemake.params.stores["val"],
        Path(snakemake.output.checkpoint).parent,
        params,
        threads=snakemake.threads,
        **snakemake.params.card,
    )
