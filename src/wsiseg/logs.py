"""Logging set-up shared by the CLI and the Snakemake scripts."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Log wsiseg messages to stderr with timestamps."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)


@contextlib.contextmanager
def log_to(path: str | Path | None) -> Iterator[None]:
    """Send logging, stdout and stderr (progress bars, warnings) to ``path`` while active."""
    if path is None:
        setup_logging()
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        logging.basicConfig(level=logging.INFO, format=FORMAT, stream=handle, force=True)
        try:
            yield
        except BaseException:
            logging.getLogger("wsiseg").exception("stage failed")
            raise
