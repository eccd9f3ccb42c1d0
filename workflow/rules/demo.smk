if DEMO:

    rule demo:
        """Write the deterministic synthetic slide set (TIFFs, RLE table, GeoJSON, sample sheet)."""
        output:
            samples=f"{RESULTS}/demo/samples.csv",
            annotations=f"{RESULTS}/demo/train.csv",
            images=SAMPLES["image"].tolist(),
            polygons=[m for m in SAMPLES["mask"].unique() if m.endswith(".json")],
        params:
            demo={k: v for k, v in config["demo"].items() if k != "enabled"},
            seed=config["seed"],
        log:
            f"{RESULTS}/logs/demo.log",
        benchmark:
            f"{RESULTS}/benchmarks/demo.tsv"
        message:
            "Generating the synthetic demo slide set"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        conda:
            "../../envs/convert.yaml"
        script:
            "../scripts/demo.py"
