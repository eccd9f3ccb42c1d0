rule predict:
    """Tiled, blended inference over one slide, streamed to a zarr store."""
    input:
        slide=f"{RESULTS}/zarr/{{slide}}.zarr",
        checkpoint=f"{RESULTS}/models/{MODEL}/model.ckpt",
    output:
        directory(f"{RESULTS}/predictions/{{slide}}.zarr"),
    params:
        predict=config["predict"],
    log:
        f"{RESULTS}/logs/predict/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{slide}}.tsv"
    message:
        "Predicting slide {wildcards.slide}"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=240,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/predict.py"
