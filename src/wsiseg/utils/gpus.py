"""One GPU per job on a multi-GPU machine: a small lock-file pool.

``snakemake --resources gpu=4`` bounds how many GPU jobs run at once, not which GPU each one uses: every
job would take GPU 0.  A job that asks for ``count`` GPUs claims the first free ones among the visible
GPUs by an exclusive lock on ``<pool>/gpu<id>.lock`` (``flock``: the kernel releases it when the process
ends, however it ends) and restricts itself to them with ``CUDA_VISIBLE_DEVICES`` before CUDA starts.  A
GPU allocation made by SLURM (``SLURM_JOB_ID`` with ``CUDA_VISIBLE_DEVICES`` set) is respected as it is.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import IO, Sequence

log = logging.getLogger(__name__)

_HELD: list[IO] = []  # the lock files of the GPUs this process claimed: held until it exits


def visible_gpus() -> list[str]:
    """The GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every GPU torch counts."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover - torch is a dependency
        return []


def claim_gpus(
    pool: str | Path,
    count: int = 1,
    gpus: Sequence[str] | None = None,
    poll: float = 1.0,
    timeout: float | None = None,
) -> list[str] | None:
    """Claim ``count`` free GPUs of ``gpus`` (default :func:`visible_gpus`) for this process and set
    ``CUDA_VISIBLE_DEVICES`` to them; wait (``poll`` seconds between tries, at most ``timeout``) while other
    jobs hold them.  Returns the ids claimed, or None when there is nothing to choose: a SLURM allocation,
    no more GPUs than asked for, or ``count`` 0."""
    if count <= 0 or (os.environ.get("SLURM_JOB_ID") and "CUDA_VISIBLE_DEVICES" in os.environ):
        return None
    gpus = list(visible_gpus() if gpus is None else gpus)
    if len(gpus) <= count:
        return None
    folder = Path(pool)
    folder.mkdir(parents=True, exist_ok=True)
    start, waited = time.monotonic(), False
    while True:
        claimed: list[IO] = []
        for gpu in gpus:
            handle = open(folder / f"gpu{gpu}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            claimed.append(handle)
            if len(claimed) == count:
                break
        if len(claimed) == count:
            ids = [Path(h.name).stem[3:] for h in claimed]
            _HELD.extend(claimed)
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
            log.info("GPU(s) %s of %s for this job (locks in %s)", ",".join(ids), ",".join(gpus), folder)
            return ids
        for handle in claimed:  # not enough free: let the others have these while waiting
            handle.close()
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"{folder}: no {count} free GPU(s) of {','.join(gpus)} within {timeout:g} s")
        if not waited:
            log.info("waiting for %d free GPU(s) of %s (held by other jobs: %s)", count, ",".join(gpus), folder)
            waited = True
        time.sleep(poll)
