"""Snakemake wrapper: extract the training patches of a group of small slides."""

from wsiseg.config.schema import from_mapping
from wsiseg.patches import PatchParams, extract_patches_many
from wsiseg.utils.logs import log_to

with log_to(snakemake.log[0]):
    params = from_mapping(PatchParams, {**snakemake.params.patches, "seed": snakemake.params.seed}, "patches")
    extract_patches_many(snakemake.params.slides, snakemake.output[0], params)
