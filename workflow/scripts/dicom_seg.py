"""Snakemake wrapper: one slide's predicted mask as a DICOM Segmentation."""

from wsiseg.dicomseg import write_dicom_seg
from wsiseg.utils.logs import log_to

with log_to(snakemake.log[0]):
    write_dicom_seg(
        snakemake.params.prediction,
        snakemake.output[0],
        source=snakemake.input.source,
        class_name=snakemake.params.class_name,
        class_names=snakemake.params.class_names,
        max_side=snakemake.params.max_side,
    )
