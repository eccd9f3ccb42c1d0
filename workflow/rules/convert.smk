rule convert:
    """Stream one slide (and its annotation) into an OME-NGFF zarr pyramid."""
    input:
        unpack(convert_input),
    output:
        directory(f"{RESULTS}/zarr/{{slide}}.zarr"),
    params:
        convert=config["convert"],
    log:
        f"{RESULTS}/logs/convert/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert/{{slide}}.tsv"
    message:
        "Converting slide {wildcards.slide} to OME-Zarr"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        "../../envs/convert.yaml"
    script:
        "../scripts/convert.py"
