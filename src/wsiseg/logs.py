"""Logging set-up shared by the CLI and the Snakemake scripts."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Log wsiseg messages to stderr with timestamps."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)


@contextlib.contextmanager
def log_to(path: str | Path | None) -> Iterator[None]:
    """Send logging, stdout and stderr (progress bars, library warnings) to ``path`` while active.

    Redirects at the file-descriptor level, so output of handlers created at
    import time (e.g. Lightning's) and of native code lands in the log too."""
    if path is None:
        setup_logging()
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        logging.basicConfig(level=logging.INFO, format=FORMAT, stream=sys.stderr, force=True)
        try:
            yield
        except BaseException:
            logging.getLogger("wsiseg").exception("stage failed")
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
