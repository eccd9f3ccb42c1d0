rule report:
    """RLE submission for test slides, per-slide metrics, overlays and GeoJSON objects."""
    input:
        predictions=expand(
            f"{RESULTS}/predictions/{{slide}}.zarr", slide=predicted_slides()
        ),
        slides=expand(f"{RESULTS}/zarr/{{slide}}.zarr", slide=predicted_slides()),
        sample=[config["report"]["sample_submission"] or []],
    output:
        submission=report(
            f"{RESULTS}/submission.csv",
            caption="../report/submission.rst",
            category="Results",
        ),
        metrics=report(
            f"{RESULTS}/metrics.csv",
            caption="../report/metrics.rst",
            category="Results",
        ),
        overlays=report(
            expand(f"{RESULTS}/overlays/{{slide}}.png", slide=predicted_slides()),
            caption="../report/overlay.rst",
            category="Overlays",
        ),
        geojson=expand(f"{RESULTS}/geojson/{{slide}}.geojson", slide=predicted_slides()),
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    conda:
        "../../envs/convert.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        report=config["report"],
        slide_ids=predicted_slides(),
        splits={s: SAMPLES.loc[s, "split"] for s in predicted_slides()},
    message:
        "Writing submission, metrics, overlays and GeoJSON"
    script:
        "../scripts/report.py"
