"""Where the tests find the repository and the shared real data beside it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root (the workflow, config/ and pyproject.toml)."""

SHARED = ROOT.parent / "shared"
"""``../shared`` beside the repository: real datasets under ``data/`` (tests skip when it is absent)."""
