"""Snakemake wrapper: convert one slide to OME-Zarr."""

from wsiseg.config.params import ConvertParams
from wsiseg.config.schema import from_mapping
from wsiseg.convert import convert_slide
from wsiseg.utils.logs import log_to

with log_to(snakemake.log[0]):
    convert_slide(
        snakemake.input.image,
        snakemake.output[0],
        mask=snakemake.input.get("mask"),
        slide_id=snakemake.wildcards.slide,
        params=from_mapping(ConvertParams, {**snakemake.params.convert, "workers": snakemake.threads}, "convert"),
        require_foreground=snakemake.params.require_foreground,
        mpp=snakemake.params.mpp,
    )
