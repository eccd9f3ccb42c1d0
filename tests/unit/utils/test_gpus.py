"""One GPU per job on a multi-GPU machine: concurrent jobs claim different GPUs from a lock-file pool,
a finished (or killed) job's GPU is claimed again, and a SLURM allocation is left as it is."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from wsiseg.utils import gpus

FOUR = ["0", "1", "2", "3"]


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Each test starts with no GPU claimed and leaves CUDA_VISIBLE_DEVICES as it was."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(FOUR))
    yield
    for handle in gpus._HELD:
        handle.close()
    gpus._HELD.clear()


def test_concurrent_jobs_take_different_gpus_and_a_released_one_is_taken_again(tmp_path):
    holder = subprocess.Popen(  # another job: claims one GPU and keeps it while it runs
        [
            sys.executable,
            "-c",
            f"from wsiseg.utils.gpus import claim_gpus; print(claim_gpus({str(tmp_path)!r}, 1)[0], flush=True); "
            "import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "0,1,2,3"},
    )
    try:
        theirs = holder.stdout.readline().strip()
        assert theirs == "0"
        mine = gpus.claim_gpus(tmp_path, 1)
        assert mine == ["1"] and os.environ["CUDA_VISIBLE_DEVICES"] == "1"  # this job sees its own GPU only
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(FOUR)
        assert gpus.claim_gpus(tmp_path, 2) == ["2", "3"]  # a two-GPU job (DDP) gets two free ones
    finally:
        holder.kill()  # killed, not finished: the kernel drops its lock
        holder.wait()
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(FOUR)
    assert gpus.claim_gpus(tmp_path, 1) == ["0"]


def test_a_job_waits_for_a_free_gpu(tmp_path):
    assert gpus.claim_gpus(tmp_path, 1, gpus=["0", "1"]) == ["0"]
    assert gpus.claim_gpus(tmp_path, 1, gpus=["0", "1"]) == ["1"]
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="no 1 free GPU"):
        gpus.claim_gpus(tmp_path, 1, gpus=["0", "1"], poll=0.05, timeout=0.3)
    assert time.monotonic() - start >= 0.3


def test_slurm_allocations_and_single_gpu_machines_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpus.claim_gpus(tmp_path, 1) is None and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert gpus.claim_gpus(tmp_path, 1) is None  # one visible GPU: nothing to choose
    assert gpus.claim_gpus(tmp_path, 0, gpus=FOUR) is None  # a CPU job claims nothing
    assert not list(tmp_path.iterdir())
