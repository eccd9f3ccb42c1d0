rule train:
    """Train the segmentation model on train-slide patches, validate on val-slide patches."""
    input:
        unpack(train_patches),
    output:
        checkpoint=f"{RESULTS}/models/{TRAIN_RUN}/model.ckpt",
        card=f"{RESULTS}/models/{TRAIN_RUN}/model.json",
        metrics=report(
            f"{RESULTS}/models/{TRAIN_RUN}/metrics.csv",
            caption="../report/metrics_train.rst",
            category="Training",
        ),
        curves=report(
            f"{RESULTS}/models/{TRAIN_RUN}/curves.png",
            caption="../report/curves.rst",
            category="Training",
        ),
    log:
        f"{RESULTS}/logs/train/{TRAIN_RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{TRAIN_RUN}.tsv"
    wildcard_constraints:
        fold=r"\d+",
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime"],
        gpu=config["resources"]["gpu"],
    params:
        train=train_settings(),
        seed=config["seed"],
        stores=train_stores,
        card=card_settings(),
    message:
        f"Training model {TRAIN_LABEL}"
    script:
        "../scripts/train.py"


if FOLDS:

    rule train_folds:
        """Cross-validation summary: per-fold epoch metrics in one table, mean curves over folds."""
        input:
            metrics=fold_outputs("metrics.csv"),
            cards=fold_outputs("model.json"),
        output:
            metrics=report(
                f"{RESULTS}/models/{{model}}/metrics.csv",
                caption="../report/metrics_train.rst",
                category="Training",
            ),
            curves=report(
                f"{RESULTS}/models/{{model}}/curves.png",
                caption="../report/curves.rst",
                category="Training",
            ),
            card=f"{RESULTS}/models/{{model}}/model.json",
        log:
            f"{RESULTS}/logs/train/{{model}}.folds.log",
        benchmark:
            f"{RESULTS}/benchmarks/train/{{model}}.folds.tsv"
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        message:
            "Summarising the {FOLDS} folds of model {wildcards.model}"
        script:
            "../scripts/train_folds.py"
