"""Snakemake wrapper: predict one slide."""

from pathlib import Path

import torch

from wsiseg.config.schema import from_mapping
from wsiseg.predict import PredictParams, predict_slide
from wsiseg.utils.gpus import claim_gpus
from wsiseg.utils.logs import log_to

with log_to(snakemake.log[0]):
    # on a multi-GPU machine, the GPU(s) no other running job holds (resources: gpu; SLURM allocates its own)
    claim_gpus(Path(snakemake.config["results"]) / ".gpus", int(snakemake.resources.get("gpu", 0)))
    torch.set_num_threads(snakemake.threads)
    params = from_mapping(PredictParams, snakemake.params.predict, "predict")
    model = snakemake.params.model or list(snakemake.input.checkpoints)  # predict.model: folders keep their model cards
    predict_slide(snakemake.input.slide, model, snakemake.output[0], params, **snakemake.params.names)
