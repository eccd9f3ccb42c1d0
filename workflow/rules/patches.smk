rule patches:
    """Cut a slide into training patches kept by mask coverage, plus tissue negatives and random cells; tissue mask PNG."""
    input:
        f"{RESULTS}/zarr/{{slide}}.zarr",
    output:
        zarr=directory(f"{RESULTS}/patches/{{slide}}.zarr"),
        index=f"{RESULTS}/patches/{{slide}}.csv",
        tissue=f"{RESULTS}/patches/{{slide}}.tissue.png",
    log:
        f"{RESULTS}/logs/patches/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/patches/{{slide}}.tsv"
    conda:
        "../envs/convert.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        patches=config["patches"],
        seed=config["seed"],
    message:
        "Extracting patches from slide {wildcards.slide}"
    script:
        "../scripts/patches.py"


rule patches_batch:
    """Extract the patches of a group of small slides in one job (slides_per_job > 1)."""
    input:
        converted_groups("patches"),
    output:
        directory(f"{RESULTS}/patches/{SLIDE_GROUPS}/{{batch}}"),
    log:
        f"{RESULTS}/logs/patches/{SLIDE_GROUPS}/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/patches/{SLIDE_GROUPS}/{{batch}}.tsv"
    conda:
        "../envs/convert.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        patches=config["patches"],
        seed=config["seed"],
        slides=slide_stores("patches"),
    message:
        "Extracting patches from slide group {wildcards.batch}"
    script:
        "../scripts/patches_batch.py"
