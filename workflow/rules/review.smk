rule review_slide:
    """One predicted slide's regions to review in QuPath (most uncertain first) and its objects, editable."""
    input:
        prediction=slide_prediction,
    output:
        f"{RESULTS}/review/{{slide}}.geojson",
    log:
        f"{RESULTS}/logs/review/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/review/{{slide}}.tsv"
    conda:
        "../envs/convert.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        prediction=prediction_store,
        top=config["report"]["review_top"],
        tile=config["report"]["review_tile"],
        class_name=config["report"]["class_name"],
        class_names=CLASS_NAMES,
    message:
        "Writing the regions of slide {wildcards.slide} to review in QuPath"
    script:
        "../scripts/review.py"


rule review:
    """`snakemake review`: the QuPath review files of every predicted slide (not part of `all`)."""
    input:
        expand(f"{RESULTS}/review/{{slide}}.geojson", slide=predicted_slides()),
