rule predict:
    """Tiled, blended inference over one slide, streamed to a zarr store."""
    input:
        slide=f"{RESULTS}/zarr/{{slide}}.zarr",
        checkpoints=model_checkpoints(),
    output:
        directory(f"{RESULTS}/predictions/{{slide}}.zarr"),
    log:
        f"{RESULTS}/logs/predict/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{slide}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=config["resources"]["predict_mem_mb"],
        runtime=config["resources"]["predict_runtime"],
        gpu=config["resources"]["gpu"],
    params:
        predict=predict_settings(),
        model=PREDICT_MODEL,
        names=prediction_names(),
    message:
        "Predicting slide {wildcards.slide}"
    script:
        "../scripts/predict.py"


rule predict_batch:
    """Predict a group of small slides in one job, loading the model once (slides_per_job > 1)."""
    input:
        slides=converted_groups("predictions"),
        checkpoints=model_checkpoints(),
    output:
        directory(f"{RESULTS}/predictions/{SLIDE_GROUPS}/{{batch}}"),
    log:
        f"{RESULTS}/logs/predict/{SLIDE_GROUPS}/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{SLIDE_GROUPS}/{{batch}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=config["resources"]["predict_mem_mb"],
        runtime=config["resources"]["predict_runtime"],
        gpu=config["resources"]["gpu"],
    params:
        predict=predict_settings(),
        model=PREDICT_MODEL,
        names=prediction_names(),
        slides=slide_stores("predictions"),
    message:
        "Predicting slide group {wildcards.batch}"
    script:
        "../scripts/predict_batch.py"
