"""Exact recovery of a killed training run (issue 14): resuming from an epoch's
``last.ckpt`` ends bit for bit where an uninterrupted run with the same seed ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from support.patches import write_store
from support.paths import ROOT

from wsiseg.train import TrainParams, fingerprint, resume_checkpoint

# hflip and vflip of equal probability: their streams must be independent (see test below);
# affine/hsv draw continuous parameters, so any shift of the augmentation stream shows in the weights
AUGMENT = ["hflip=0.5", "vflip=0.5", "rot90=0.5", "affine=0.5", "hsv=0.5"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("resume")
    return write_store(work / "train.zarr", 40, seed=1), write_store(work / "val.zarr", 16, seed=2)


def train_command(stores: tuple[Path, Path], out: Path, num_workers: int = 0) -> list[str]:
    """The ``wsiseg train`` command line of a tiny 3-epoch CPU run."""
    train, val = stores
    return [
        sys.executable,
        "-m",
        "wsiseg.cli",
        "train",
        "--train",
        str(train),
        "--val",
        str(val),
        "--out-dir",
        str(out),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "0.003",
        "--encoder-depth",
        "3",
        "--decoder-channels",
        "32",
        "16",
        "8",
        "--accelerator",
        "cpu",
        "--threads",
        "1",
        "--seed",
        "11",
        "--num-workers",
        str(num_workers),
        "--augment",
        *AUGMENT,
    ]


def run(command: list[str]) -> str:
    """Run ``command`` to completion; its output (stdout and stderr)."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch stored in checkpoint ``path``; None while it does not exist (Lightning renames it into place)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def kill_after_a_checkpoint(command: list[str], out: Path) -> int:
    """Start ``command`` in its own process group and SIGKILL the group as soon as epoch 0's ``last.ckpt`` exists;
    the epoch of the checkpoint left behind (1 when a busy machine let the run save epoch 1's before the kill)."""
    last = out / "lightning" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not last.exists():
            assert process.poll() is None, (
                f"training ended before its first checkpoint: {process.stderr.read().decode()}"
            )
            assert time.monotonic() < deadline, "no last.ckpt after 240 s"
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    epoch = checkpoint_epoch(last)
    assert epoch in (0, 1), f"the kill came after the last epoch's checkpoint (epoch {epoch}): nothing left to resume"
    assert not (out / "model.ckpt").exists() and not (out / "metrics.csv").exists()
    return epoch


@pytest.fixture(scope="module")
def uninterrupted(stores, tmp_path_factory) -> Path:
    """An uninterrupted run's output folder (num_workers=0)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    run(train_command(stores, out))
    return out


def assert_same_run(a: Path, b: Path) -> int:
    """Every tensor of the two model.ckpt state_dicts is equal and metrics.csv is byte-identical; the tensor count."""
    sa = torch.load(a / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    sb = torch.load(b / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)} of {len(sa)} tensors differ, e.g. {differ[:3]}"
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    return len(sa)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_killed_run_resumes_bit_for_bit(stores, uninterrupted, tmp_path, num_workers):
    out = tmp_path / "killed"
    command = train_command(stores, out, num_workers)
    epoch = kill_after_a_checkpoint(command, out)
    output = run(command)  # the same command again, as Snakemake's rerun-incomplete does
    assert "resuming the interrupted run" in output and f"(epoch {epoch + 1})" in output
    # every tensor equal, metrics.csv identical: also across num_workers (the reference ran with 0)
    assert assert_same_run(uninterrupted, out) == 158
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in metrics] == ["epoch", "0", "1", "2"]
    assert all("" not in line.split(",") for line in metrics)  # epoch 0's train_loss survived the kill


def test_augmentation_streams_are_independent_per_transform():
    import numpy as np

    from wsiseg.nn.augment import build_augmentation

    image = np.stack([np.arange(16, dtype=np.uint8).reshape(4, 4)] * 3, -1)
    aug = build_augmentation({"hflip": 0.5, "vflip": 0.5}, seed=3)
    seen = {aug(image=image)["image"][..., 0].tobytes() for _ in range(64)}
    assert len(seen) == 4  # identity, hflip, vflip and both: the two decisions are not the same coin


def test_default_profile_resumes_an_incomplete_run(stores, tmp_path):
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "default" / "config.yaml").read_text())
    assert profile["rerun-incomplete"] is True  # a killed job's outputs are deleted and the rule reruns ...
    params = TrainParams(encoder_depth=3, decoder_channels=(32, 16, 8), epochs=3)
    assert params.resume is True  # ... and train continues from lightning/checkpoints/last.ckpt (not an output)
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["train"]["properties"]["resume"]["default"] is True
    assert (yaml.safe_load((ROOT / "config" / "config.yaml").read_text()).get("train") or {}).get(
        "resume", True
    ) is True
    assert (
        "shadow:" not in (ROOT / "workflow" / "rules" / "train.smk").read_text()
    )  # lightning/ lives in the real folder
    key, work = fingerprint(params, stores), tmp_path / "lightning"
    assert resume_checkpoint(work, key) is None  # first attempt: fresh
    (work / "checkpoints").mkdir()
    (work / "checkpoints" / "last.ckpt").write_bytes(b"epoch 0")
    assert resume_checkpoint(work, key) == work / "checkpoints" / "last.ckpt"  # the rerun resumes
    assert (work / "checkpoints" / "last.ckpt").exists()
    other = fingerprint(TrainParams(encoder_depth=3, decoder_channels=(32, 16, 8), epochs=4), stores)
    assert resume_checkpoint(work, other) is None and not (work / "checkpoints").exists()  # other settings: fresh
