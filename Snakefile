"""wsiseg: whole-slide image segmentation, from TIFF to RLE submission.

Run `snakemake --cores N` (defaults in config.yaml run the embedded demo).
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/patches.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/report.smk"


rule all:
    """Everything: trained model, predictions, submission, metrics and overlays."""
    input:
        final_outputs(),
