"""Snakemake wrapper: convert a group of small slides to OME-Zarr in one job."""

from wsiseg.convert import convert_many
from wsiseg.utils.logs import log_to

with log_to(snakemake.log[0]):
    convert_many(
        snakemake.params.slides,
        snakemake.output[0],
        foreground_slides=snakemake.params.foreground,
        workers=snakemake.threads,
        **snakemake.params.convert,
    )
