"""Logging set-up shared by the CLI and the Snakemake scripts."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

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


class PlainProgress:
    """Progress as plain log lines (no carriage returns or terminal escape codes), for log files:
    one line at most every ``interval`` seconds and one at the end."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        interval: float = 30.0,
    ):
        self.iterable, self.desc, self.unit, self.interval = iterable, desc, unit, interval
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.start = 0, time.monotonic()
        self.last = self.start
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        return f"{self.desc}: {done} {self.unit}{share}, {rate:.2f} {self.unit}/s, {elapsed:.0f} s"

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; log a line when ``interval`` seconds have passed."""
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval and not (self.total and self.n >= self.total):
            self.last = now
            logging.getLogger("wsiseg.progress").info(self._line())

    def close(self) -> None:
        """Log the final line (once)."""
        if not self.closed:
            self.closed = True
            logging.getLogger("wsiseg.progress").info(
                self._line() + " done" if self.total is None or self.n >= self.total else self._line()
            )

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    mininterval: float = 10.0,
):
    """A tqdm bar on a terminal; :class:`PlainProgress` log lines when stderr is a file (logs under
    results/logs/ then hold readable periodic lines instead of carriage returns and escape codes)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, mininterval=mininterval)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, interval=max(30.0, mininterval))


class StepTimes:
    """Wall seconds spent in named steps, summed over calls: where a multi-threaded stage's time goes.

    Name steps ``"thread: step"``; each step is timed in one thread at a time.  Steps of different threads
    overlap in time, so a thread whose steps add up to the stage's wall time is its bottleneck, and one that
    mostly waits is not."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as step ``name`` (added to its earlier calls)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def waiting(self, name: str, items: Iterable[T]) -> Iterator[T]:
        """Iterate ``items``, timing each wait for the next one as step ``name``; closes ``items`` when done."""
        iterator, end = iter(items), object()
        try:
            while True:
                with self.step(name):
                    item = next(iterator, end)
                if item is end:
                    return
                yield item
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def summary(self) -> str:
        """``thread: step 1.23 s, step 0.45 s; thread: ...``, threads and steps in the order first timed."""
        threads: dict[str, list[str]] = {}
        for name, seconds in self.seconds.items():
            thread, _, step = name.rpartition(": ")
            threads.setdefault(thread, []).append(f"{step} {seconds:.2f} s")
        return "; ".join(
            f"{thread}: {', '.join(steps)}" if thread else ", ".join(steps) for thread, steps in threads.items()
        )
