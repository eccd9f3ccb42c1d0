"""Multi-process training (DDP) on the CPU: Lightning's ddp strategy over gloo, 2 processes, as it would
run on 2 GPUs.  Each rank takes its share of the epoch, validation counts are summed over ranks, rank 0
alone writes the model folder, and a run stopped after an epoch resumes exactly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from support.patches import write_store
from support.paths import ROOT

from wsiseg.nn.data import EpochSampler

DRIVER = textwrap.dedent(
    """
    import logging
    import sys
    sys.path.insert(0, {tests!r})
    import pytorch_lightning as pl
    from support.patches import TINY
    from wsiseg.train import TrainParams, train_model

    out, devices, batch, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    logging.basicConfig(level=logging.INFO)

    class Stop(pl.Callback):  # an interruption at the start of epoch `stop` (after epoch stop - 1 was saved)
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == stop:
                raise KeyboardInterrupt

    params = TrainParams(**{{**TINY, "epochs": EPOCHS, "batch_size": batch, "devices": devices}})
    train_model([{train!r}], [{val!r}], out, params, threads=1, callbacks=[Stop()] if stop >= 0 else [])
    """
)
EPOCHS = 2


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("ddp")
    train, val = write_store(work / "train.zarr", 32, seed=0), write_store(work / "val.zarr", 12, seed=1)
    path = work / "driver.py"
    path.write_text(DRIVER.format(tests=str(ROOT / "tests"), train=str(train), val=str(val)).replace("EPOCHS", "2"))
    return path


def run(driver: Path, out: Path, devices: int, batch: int, stop: int = -1) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(driver), str(out), str(devices), str(batch), str(stop)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=driver.parent)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.ckpt", weights_only=True, map_location="cpu")["state_dict"]


def test_epoch_shares_are_disjoint_cover_the_epoch_and_make_the_single_process_batches():
    one = [k for k, _ in EpochSampler(30, seed=3)]
    shares = [[k for k, _ in EpochSampler(30, seed=3, rank=r, world=4)] for r in range(4)]
    assert all(len(s) == 8 for s in shares)  # 30 keys padded to 32: every rank takes as many steps
    assert sorted(set().union(*shares)) == list(range(30))
    assert sorted(sum(shares, [])) == sorted(one + one[:2])  # each key once, plus the two padding keys
    # step 0 of the 4 ranks at batch 2 is the single-process batch 0 at batch 8
    assert sorted(k for s in shares for k in s[:2]) == sorted(one[:8])


def test_two_processes_train_like_one_with_the_same_global_batch_and_resume_exactly(driver, tmp_path):
    from support.patches import TINY

    from wsiseg.train import TrainParams, train_model

    stores = driver.parent / "train.zarr", driver.parent / "val.zarr"
    params = TrainParams(**{**TINY, "epochs": EPOCHS, "batch_size": 16})
    train_model([stores[0]], [stores[1]], tmp_path / "one", params, threads=1)  # the same run in one process
    double = run(driver, tmp_path / "two", devices=2, batch=8)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("one", "two"))
    assert len(two) == 2 and two["epoch"].tolist() == [0, 1]  # one row per epoch: rank 0 alone wrote it
    # per-rank batch norm and Dice over 8 instead of 16 patches: close, not equal
    assert abs(two["train_loss"].iloc[-1] - one["train_loss"].iloc[-1]) < 0.05 * one["train_loss"].iloc[-1]
    assert abs(two["val_dice"].iloc[-1] - one["val_dice"].iloc[-1]) < 0.1
    assert (tmp_path / "two" / "model.json").exists() and not list(tmp_path.glob("two/*.tmp*"))

    stopped = run(driver, tmp_path / "resumed", devices=2, batch=8, stop=1)
    assert stopped.returncode != 0 and (tmp_path / "resumed" / "lightning" / "checkpoints" / "last.ckpt").exists()
    resumed = run(driver, tmp_path / "resumed", devices=2, batch=8)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the interrupted run" in resumed.stderr
    a, b = _weights(tmp_path / "two"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-exact, as a single-process resume
