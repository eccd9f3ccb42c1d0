rule convert:
    """Stream one slide (and its annotation) into an OME-NGFF zarr pyramid."""
    input:
        unpack(convert_input),
    output:
        directory(f"{RESULTS}/zarr/{{slide}}.zarr"),
    log:
        f"{RESULTS}/logs/convert/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert/{{slide}}.tsv"
    conda:
        "../envs/convert.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        convert=config["convert"],
        # train/val annotations must hold foreground (convert.allow_empty_mask turns the error into a warning)
        require_foreground=needs_foreground,
        # the sample sheet's pixel size (um/px) overrides the slide's metadata
        mpp=slide_mpp,
    message:
        "Converting slide {wildcards.slide} to OME-Zarr"
    script:
        "../scripts/convert.py"


rule convert_batch:
    """Convert a group of small slides in one job (slides_per_job > 1): every image and mask is checked first."""
    input:
        unpack(convert_batch_input),
    output:
        directory(f"{RESULTS}/zarr/{SLIDE_GROUPS}/{{batch}}"),
    log:
        f"{RESULTS}/logs/convert/{SLIDE_GROUPS}/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert/{SLIDE_GROUPS}/{{batch}}.tsv"
    conda:
        "../envs/convert.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        convert=config["convert"],
        slides=convert_items,
        foreground=foreground_slides,
    message:
        "Converting slide group {wildcards.batch} to OME-Zarr"
    script:
        "../scripts/convert_batch.py"
