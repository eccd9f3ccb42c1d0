"""End-to-end runs (Snakemake on tiny slides, the SLURM profile, real data): every test here is marked ``slow``.

The one place that says so: ``pytest -m "not slow"`` or ``pytest tests/unit`` is the fast loop.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)
