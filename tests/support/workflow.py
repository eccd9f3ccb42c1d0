"""Running the workflow in a test: the Snakefile, a run's config file, the tiny demo slide set."""

from __future__ import annotations

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
