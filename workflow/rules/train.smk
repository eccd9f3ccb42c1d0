rule train:
    """Train the segmentation model on train-slide patches, validate on val-slide patches."""
    input:
        train=expand(f"{RESULTS}/patches/{{slide}}.zarr", slide=slides("train")),
        val=expand(f"{RESULTS}/patches/{{slide}}.zarr", slide=slides("val")),
    output:
        checkpoint=f"{RESULTS}/models/{{model}}/model.ckpt",
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
    log:
        f"{RESULTS}/logs/train/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 4
    resources:
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime"],
        gpu=config["resources"]["gpu"],
    params:
        train=train_settings(),
        seed=config["seed"],
    message:
        "Training model {wildcards.model}"
    script:
        "../scripts/train.py"
