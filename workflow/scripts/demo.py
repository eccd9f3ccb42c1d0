"""Snakemake wrapper: write the demo slide set."""

from pathlib import Path

from wsiseg.demo import DemoSpec, generate_demo
from wsiseg.utils.logs import log_to

with log_to(snakemake.log[0]):
    generate_demo(Path(snakemake.output.samples).parent, DemoSpec(**snakemake.params.demo, seed=snakemake.params.seed))
