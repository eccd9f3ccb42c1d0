"""Snakemake wrapper: one slide's regions to review in QuPath."""

from wsiseg.review import write_review
from wsiseg.utils.logs import log_to

with log_to(snakemake.log[0]):
    write_review(
        snakemake.params.prediction,
        snakemake.output[0],
        top=snakemake.params.top,
        tile=snakemake.params.tile,
        class_name=snakemake.params.class_name,
        class_names=snakemake.params.class_names,
    )
