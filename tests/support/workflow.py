"""Running the workflow in a test: the Snakefile, a run's config file, the tiny demo slide set."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support.paths import ROOT
from wsiseg.demo import DemoSpec

SNAKEFILE = ROOT / "workflow" / "Snakefile"


def write_config(workdir: Path, config: dict | str) -> Path:
    """Write a run's ``config/config.yaml`` (where workflow/Snakefile looks) in ``workdir``."""
    import yaml

    path = Path(workdir) / "config" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


TINY = DemoSpec(slides=3, height=384, width=512, radius_min=30, radius_max=50, seed=7)


TINY_CONFIG = {
    "results": "out",
    "samples": "unused.csv",
    "seed": 1,
    "model_name": "tiny",
    "demo": {"enabled": True, "slides": 3, "height": 384, "width": 512, "radius_min": 30, "radius_max": 50},
    "convert": {"chunk": 128},
    "patches": {"size": 64, "downscale": 2, "stride": 32, "min_coverage": 0.05},
    "train": {"encoder_depth": 3, "decoder_channels": [32, 16, 8], "epochs": 1, "batch_size": 8, "accelerator": "cpu"},
    "predict": {"tile": 64, "overlap": 16},
}


def snakemake_command(workdir: str | Path, *args: str) -> list[str]:
    """The command line of snakemake on this repository's Snakefile in ``workdir``, with ``args``."""
    return [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args]


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    """Run snakemake on this repository's Snakefile in ``workdir`` with ``config``."""
    write_config(workdir, config)
    cmd = snakemake_command(workdir, "--cores", "2", *args)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)


def scheduled(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule from a dry run's 'Job stats' table."""
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}
