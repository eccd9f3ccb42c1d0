if DEMO:

    rule demo:
        """Write the deterministic synthetic slide set (TIFFs, RLE table, GeoJSON, sample sheet)."""
        output:
            samples=f"{RESULTS}/demo/samples.csv",
            annotations=f"{RESULTS}/demo/train.csv",
            images=SAMPLES["image"].tolist(),
            polygons=[m for m in SAMPLES["mask"].unique() if m.endswith(".json")],
        log:
            f"{RESULTS}/logs/demo.log",
        benchmark:
            f"{RESULTS}/benchmarks/demo.tsv"
        conda:
            "../envs/convert.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            demo={k: v for k, v in config["demo"].items() if k != "enabled"},
            seed=config["seed"],
        message:
            "Generating the synthetic demo slide set"
        script:
            "../scripts/demo.py"
