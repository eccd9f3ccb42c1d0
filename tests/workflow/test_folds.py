"""k-fold training through the workflow: one model per fold, every fold's model in the prediction."""

from __future__ import annotations

from support.workflow import TINY_CONFIG, scheduled, snakemake


def test_kfold_workflow_trains_every_fold_and_predicts_with_all(tmp_path):
    config = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "folds": 2}}  # the tiny demo has 2 train+val slides
    result = snakemake(tmp_path, config, "-n")
    assert result.returncode == 0, result.stdout[-3000:]
    assert scheduled(result) == {
        "demo": 1,
        "convert": 3,
        "patches": 2,
        "train": 2,
        "train_folds": 1,
        "predict": 2,
        "report": 1,
        "all": 1,
    }
    predict_jobs = [job for job in result.stdout.split("Job ")[1:] if "Missing output files: out/predictions/" in job]
    assert len(predict_jobs) == 2 and all(
        f"out/models/tiny/fold{k}/model.ckpt" in job for job in predict_jobs for k in range(2)
    )
    too_many = snakemake(tmp_path, {**config, "train": {**config["train"], "folds": 3}}, "-n")
    assert (
        too_many.returncode != 0
        and "`train.folds` = 3 needs at least 3 train/val slides" in too_many.stdout + too_many.stderr
    )
