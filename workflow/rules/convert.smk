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
        "../../envs/convert.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        convert=config["convert"],
    message:
        "Converting slide {wildcards.slide} to OME-Zarr"
    script:
        "../scripts/convert.py"
