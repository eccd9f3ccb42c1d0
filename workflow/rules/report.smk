rule report:
    """RLE submission for test slides, per-slide metrics, overlays and GeoJSON objects."""
    input:
        predictions=job_outputs("predictions", predicted_slides()),
        slides=job_outputs("zarr", predicted_slides()),
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
        scores=report(
            f"{RESULTS}/scores.html",
            caption="../report/scores.rst",
            category="Results",
        ),
        # one folder each, not a file per slide: a sheet of 100,000 slides would make Snakemake match
        # each of them against this job (benchmarks/cohort_bench.py), and `rule all` can ask for them
        overlays=report(
            directory(f"{RESULTS}/overlays"),
            patterns=["{slide}.png"],
            caption="../report/overlay.rst",
            category="Overlays",
        ),
        geojson=directory(f"{RESULTS}/geojson"),
        provenance=f"{RESULTS}/provenance.json",
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    conda:
        "../envs/convert.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        report={**report_settings(), "class_names": CLASS_NAMES},
        config_hash=REPORT_CONFIG_HASH,
        predictions={s: store("predictions", s) for s in predicted_slides()},
        slides={s: store("zarr", s) for s in predicted_slides()},
        splits={s: SPLIT[s] for s in predicted_slides()},
        groups=slide_groups(predicted_slides()),
    message:
        "Writing submission, metrics, overlays and GeoJSON"
    script:
        "../scripts/report.py"


rule dicom_seg:
    """One slide's predicted mask as a DICOM Segmentation (report.dicom_seg: true)."""
    input:
        prediction=slide_prediction,
        source=slide_image,
    output:
        f"{RESULTS}/dicom/{{slide}}.dcm",
    log:
        f"{RESULTS}/logs/dicom_seg/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/dicom_seg/{{slide}}.tsv"
    conda:
        "../envs/convert.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        prediction=prediction_store,
        class_name=config["report"]["class_name"],
        class_names=CLASS_NAMES,
        max_side=config["report"]["dicom_seg_max_side"],
    message:
        "Writing the mask of slide {wildcards.slide} as a DICOM Segmentation"
    script:
        "../scripts/dicom_seg.py"
