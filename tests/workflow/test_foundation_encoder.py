"""End to end, offline: a foundation-model encoder (a tiny random ViT standing in for UNI2-h) from a Hugging
Face cache, then from a plain weights file, trained for one epoch under DPT and predicted by the workflow."""

from __future__ import annotations

import json

import pandas as pd
import zarr
from support import foundation
from support.workflow import TINY_CONFIG, scheduled, snakemake

from wsiseg.modelcard import file_sha256


def test_hub_cache_then_weights_file_train_and_predict(tmp_path, monkeypatch):
    hub = tmp_path / "hf" / "hub"
    snapshot, _ = foundation.write_hub_cache(hub)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may come from the network
    train = {
        "arch": "DPT",
        "encoder": f"tu-hf-hub:{foundation.REPO}",
        "encoder_weights": "pretrained",
        "encoder_kwargs": foundation.KWARGS,
        "freeze_encoder": True,
        "unfreeze_blocks": 1,
        "epochs": 1,
        "batch_size": 8,
        "accelerator": "cpu",
    }
    config = {**TINY_CONFIG, "train": train}
    result = snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-4000:]
    model = tmp_path / "out" / "models" / "tiny"
    card = json.loads((model / "model.json").read_text())
    encoder = card["encoder"]
    assert encoder["name"] == f"tu-hf-hub:{foundation.REPO}"
    assert encoder["built_as"]["name"] == f"tu-{foundation.ARCHITECTURE}"
    assert encoder["weights"]["repo"] == foundation.REPO and encoder["weights"]["revision"] == foundation.COMMIT
    assert encoder["normalize"] == {"mean": foundation.MEAN, "std": foundation.STD}
    assert encoder["frozen"] and encoder["unfreeze_blocks"] == 1
    assert pd.read_csv(model / "metrics.csv")["val_dice"].between(0, 1).all()
    prediction = zarr.open_group(tmp_path / "out" / "predictions" / "demo_2.zarr", mode="r")
    assert prediction["labels/mask/0"].shape == (384, 512)

    # the same weights as a file: only training and what follows it run again
    weights = tmp_path / "tiny-vit.safetensors"
    foundation.write_weights_file(weights)
    file_train = {
        **train,
        "encoder": f"tu-{foundation.ARCHITECTURE}",
        "encoder_weights": str(weights),
        "encoder_kwargs": {**foundation.MODEL_ARGS, **foundation.KWARGS},
        "normalize": {"mean": foundation.MEAN, "std": foundation.STD},
    }
    file_config = {**config, "train": file_train}
    planned = scheduled(snakemake(tmp_path, file_config, "-n"))
    assert "train" in planned and "convert" not in planned and "patches" not in planned
    result = snakemake(tmp_path, file_config)
    assert result.returncode == 0, result.stderr[-4000:]
    card = json.loads((model / "model.json").read_text())
    assert card["encoder"]["weights"]["sha256"] == file_sha256(weights)
    assert card["encoder"]["normalize"]["mean"] == foundation.MEAN

    # a weights file that is not there stops the dry run, naming the key and the path
    missing = {**config, "train": {**file_train, "encoder_weights": str(tmp_path / "gone.safetensors")}}
    result = snakemake(tmp_path, missing, "-n")
    assert result.returncode != 0
    assert (
        f"`train.encoder_weights`: {tmp_path / 'gone.safetensors'}: no such weights file"
        in result.stdout + result.stderr
    )
