"""wsiseg used as a Snakemake module, the way `snakedeploy deploy-workflow` sets it up."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
from support.workflow import SNAKEFILE, TINY_CONFIG, write_config

DEPLOYED = f'''configfile: "config/config.yaml"


module wsiseg:
    snakefile:
        "{SNAKEFILE}"
    config:
        config


use rule * from wsiseg
'''


def test_module_runs_the_tiny_demo_in_the_users_project(tmp_path):
    """A fresh project with its own config/config.yaml and a Snakefile that only imports wsiseg's rules."""
    project = tmp_path / "my-project"
    write_config(project, TINY_CONFIG)
    (project / "workflow").mkdir()
    (project / "workflow" / "Snakefile").write_text(DEPLOYED)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2"], cwd=project, capture_output=True, text=True
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    out = project / "out"  # results land in the user's project, inputs resolve from there too
    assert (out / "submission.csv").exists() and (out / "models" / "tiny" / "model.ckpt").exists()
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["slide_id"].tolist()[-1] == "mean" and metrics["dice"].between(0, 1).all()
    assert (out / "logs" / "train" / "tiny.log").exists()
    again = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "-n"], cwd=project, capture_output=True, text=True
    )
    assert "Nothing to be done" in again.stdout + again.stderr
