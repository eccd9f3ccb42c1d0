"""Snakemake wrapper: extract training patches of one slide."""

from wsiseg.config.schema import from_mapping
from wsiseg.patches import PatchParams, extract_patches
from wsiseg.utils.logs import log_to

with log_to(snakemake.log[0]):
    params = from_mapping(PatchParams, {**snakemake.params.patches, "seed": snakemake.params.seed}, "patches")
    extract_patches(snakemake.input[0], snakemake.output.zarr, snakemake.output.index, params, snakemake.output.tissue)
