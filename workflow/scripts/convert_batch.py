"""Snakemake wrapper: convert a group of small slides to OME-Zarr in one job."""

from wsiseg.config.params import ConvertParams
from wsiseg.config.schema import from_mapping
from wsiseg.convert import convert_many
from wsiseg.utils.logs import log_to

with log_to(snakemake.log[0]):
    convert_many(
        snakemake.params.slides,
        snakemake.output[0],
        foreground_slides=snakemake.params.foreground,
        params=from_mapping(ConvertParams, {**snakemake.params.convert, "workers": snakemake.threads}, "convert"),
    )
