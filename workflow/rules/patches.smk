rule patches:
    """Cut a slide into training patches kept by mask coverage, plus tissue negatives."""
    input:
        f"{RESULTS}/zarr/{{slide}}.zarr",
    output:
        zarr=directory(f"{RESULTS}/patches/{{slide}}.zarr"),
        index=f"{RESULTS}/patches/{{slide}}.csv",
    params:
        patches=config["patches"],
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/patches/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/patches/{{slide}}.tsv"
    message:
        "Extracting patches from slide {wildcards.slide}"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../../envs/convert.yaml"
    script:
        "../scripts/patches.py"
