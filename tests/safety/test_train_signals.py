"""A training run ended by SIGTERM (a SLURM time limit, ``timeout``, a pre-emption) is a failed job that says
where it resumes, never a success without outputs: Lightning turns SIGTERM into a SystemExit with status 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pytorch_lightning.callbacks import Callback
from support.patches import TINY, write_store
from support.paths import ROOT

from wsiseg.train import TrainingStopped, TrainParams, train_model


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("signals")
    return write_store(work / "train.zarr", 40, seed=1), write_store(work / "val.zarr", 16, seed=2)


def train_command(stores: tuple[Path, Path], out: Path) -> list[str]:
    """``wsiseg train`` of a tiny 3-epoch CPU run."""
    train, val = stores
    return [
        *(sys.executable, "-m", "wsiseg.cli", "train", "--train", str(train), "--val", str(val)),
        *("--out-dir", str(out), "--epochs", "3", "--batch-size", "8", "--lr", "0.003", "--encoder-depth", "3"),
        *("--decoder-channels", "32", "16", "8", "--accelerator", "cpu", "--threads", "1", "--num-workers", "0"),
    ]


def test_sigterm_fails_the_job_naming_last_ckpt_and_the_rerun_resumes(stores, tmp_path):
    out = tmp_path / "model"
    last = out / "lightning" / "checkpoints" / "last.ckpt"
    command = train_command(stores, out)
    # its own process group, signalled as a whole as SLURM and `timeout` do
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not last.exists():  # epoch 1 is saved: epoch 2 has started
            assert process.poll() is None, f"training ended before its first checkpoint: {process.communicate()}"
            assert time.monotonic() < deadline, "no last.ckpt after 240 s"
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 143, stderr[-3000:]  # 128 + SIGTERM: a failed job, not a success
    assert "stopped by SIGTERM" in stderr and f"resume from {last}" in stderr
    assert not (out / "model.ckpt").exists() and not (out / "model.json").exists()

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming the interrupted run from {last}" in rerun.stderr
    assert (out / "model.ckpt").is_file() and (out / "model.json").is_file()
    assert [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()] == ["epoch", "0", "1", "2"]


class Sigterm(Callback):
    """Sends this process SIGTERM after the first batch of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_before_any_checkpoint_says_a_rerun_starts_over(stores, tmp_path, caplog):
    out = tmp_path / "model"
    params = TrainParams(**{**TINY, "epochs": 2})
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingStopped) as stopped:
        train_model([stores[0]], [stores[1]], out, params, threads=1, callbacks=[Sigterm(0)])
    assert stopped.value.code == 143 and isinstance(stopped.value, SystemExit)
    assert "stopped by SIGTERM in epoch 1/2" in str(stopped.value) and "a rerun starts over" in str(stopped.value)
    assert str(stopped.value) in caplog.text  # logged as well: the Snakemake log and the terminal show it
    assert signal.getsignal(signal.SIGTERM) == handler  # Lightning gave back the handler it replaced
    assert not (out / "model.ckpt").exists()
