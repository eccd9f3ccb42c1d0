"""End to end: the Snakemake workflow on a tiny demo config (about a minute on 2 CPU cores)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from support.paths import ROOT
from support.workflow import TINY_CONFIG, scheduled, snakemake, snakemake_command, write_config

from wsiseg import rle


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    result = snakemake(workdir, TINY_CONFIG)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


def test_every_artifact_is_written(finished):
    out = finished / "out"
    for slide in ("demo_0", "demo_1", "demo_2"):
        root = zarr.open_group(out / "zarr" / f"{slide}.zarr", mode="r")
        assert root.attrs["multiscales"][0]["version"] == "0.4"
        assert root["labels/mask/0"].shape == (384, 512)  # (y, x) image-label
        assert (out / "logs" / "convert" / f"{slide}.log").exists()
        assert (out / "benchmarks" / "convert" / f"{slide}.tsv").exists()
    for slide in ("demo_0", "demo_1"):  # train and val slides
        index = pd.read_csv(out / "patches" / f"{slide}.csv")
        assert len(index) == zarr.open_group(out / "patches" / f"{slide}.zarr", mode="r")["images"].shape[0] > 0
    model = out / "models" / "tiny"
    assert (model / "model.ckpt").stat().st_size > 0 and (model / "curves.png").exists()
    assert pd.read_csv(model / "metrics.csv")["val_dice"].between(0, 1).all()
    card = json.loads((model / "model.json").read_text())
    assert card["config"]["train"]["epochs"] == 1 and len(card["config_hash"]) == 64
    assert card["slides"] == {"train": ["demo_0"], "val": ["demo_1"]}
    for slide in ("demo_1", "demo_2"):  # val and test slides are predicted
        root = zarr.open_group(out / "predictions" / f"{slide}.zarr", mode="r")
        assert root["labels/mask/0"].shape == (384, 512) and root["0"].shape == (
            1,
            192,
            256,
        )  # probabilities: the model grid
        assert root.attrs["provenance"]["checkpoints"][0]["sha256"] == card["checkpoints"][0]["sha256"]
        assert (out / "overlays" / f"{slide}.png").exists()
        assert json.loads((out / "geojson" / f"{slide}.geojson").read_text())["type"] == "FeatureCollection"
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert submission["id"].tolist() == ["demo_2"]
    predicted = zarr.open_group(out / "predictions" / "demo_2.zarr", mode="r")["labels/mask/0"][:]
    np.testing.assert_array_equal(rle.decode(submission.loc[0, "predicted"], (384, 512)), predicted)
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["slide_id"].tolist() == ["demo_1", "demo_2", "mean"]
    assert set(metrics.columns) >= {"dice", "iou", "precision", "recall"}
    train_log = (out / "logs" / "train" / "tiny.log").read_text()
    assert train_log.count("best val_dice") == 1
    # logs hold plain lines: no carriage-return bars, no terminal escape codes
    for log in (out / "logs").rglob("*.log"):
        text = log.read_text()
        assert "\r" not in text and "\x1b" not in text, log
    assert "train: epoch 1/1 done in" in train_log


def test_html_report_bundles_curves_metrics_and_overlays(finished):
    result = snakemake(finished, TINY_CONFIG, "--report", "report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    html = (finished / "report.html").read_text()
    for name in ("curves.png", "metrics.csv", "submission.csv", "demo_1.png", "demo_2.png", "Overlays", "Training"):
        assert name in html
    assert html.count('id=\\"wsiseg-scores\\"') == 1  # the scores table, embedded in the landing page's description


# Appended to a copy of the report: once the app has rendered, records where the scores table is and
# whether it is what a person sees at its centre (not hidden, not covered by the loading screen).
VISIBILITY_PROBE = """<script>
let waited = 0;
const measure = () => {
  const table = document.getElementById("wsiseg-scores");
  if (!table && (waited += 250) < 10000) return setTimeout(measure, 250);  // the app renders after load
  const probe = {found: !!table, waited};
  if (table) {
    const r = table.getBoundingClientRect(), style = getComputedStyle(table);
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    Object.assign(probe, {left: r.left, top: r.top, width: r.width, height: r.height,
      viewport: [innerWidth, innerHeight], visibility: style.visibility, display: style.display,
      onTop: !!hit && table.contains(hit),
      rows: [...table.querySelectorAll("tbody tr")].map(tr => [...tr.cells].map(td => td.innerText.trim()))});
  }
  document.documentElement.setAttribute("data-probe", JSON.stringify(probe));
};
window.addEventListener("load", () => setTimeout(measure, 250));
</script>"""


def chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Headless Chromium (Debian's ``chromium``) with ``args``; a private profile per call."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--hide-scrollbars",
        f"--user-data-dir={cwd / 'chromium-profile'}",
        "--window-size=1400,900",
        "--virtual-time-budget=15000",
    ]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, cwd=cwd, timeout=180)


@pytest.mark.skipif(
    not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
    reason="headless Chromium is not installed (Debian: apt-get install -y chromium)",
)
def test_report_landing_page_shows_the_scores_table_in_chromium(finished, tmp_path):
    """The HTML report renders in a browser and its landing page shows the scores as a table a person sees."""
    result = snakemake(finished, TINY_CONFIG, "--report", "landing.html")
    assert result.returncode == 0, result.stderr[-3000:]
    page = (finished / "landing.html").read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    head, _, tail = page.rpartition("</body>")  # the last one: embedded scripts may hold the string too
    probed.write_text(head + VISIBILITY_PROBE + "</body>" + tail, encoding="utf-8")
    dom = chromium("--dump-dom", probed.as_uri(), cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, "the report did not render (no probe result in the DOM)"
    probe = json.loads(html.unescape(found[1]))
    assert probe["found"], "no scores table on the landing page"
    assert (
        probe["width"] > 200
        and probe["height"] > 40
        and probe["visibility"] == "visible"
        and probe["display"] == "table"
    )
    assert 0 <= probe["left"] < probe["viewport"][0] and 0 <= probe["top"] < probe["viewport"][1], probe  # on screen
    assert probe["onTop"], "the scores table is covered by something else"
    metrics = pd.read_csv(finished / "out" / "metrics.csv").set_index("slide_id")
    rows = {r[0]: r for r in probe["rows"]}
    assert set(rows) == {"demo_1", "demo_2", "all slides (mean)"}
    for slide, label in (("demo_1", "demo_1"), ("demo_2", "demo_2"), ("mean", "all slides (mean)")):
        assert (
            rows[label][2] == f"{metrics.loc[slide, 'dice']:.3f}"
            and rows[label][3] == f"{metrics.loc[slide, 'iou']:.3f}"
        )
    # a screenshot of the landing page for a person to look at (kept next to the run's outputs)
    shot = chromium(
        f"--screenshot={finished / 'report-landing.png'}", (finished / "landing.html").as_uri(), cwd=tmp_path
    )
    assert shot.returncode == 0 and (finished / "report-landing.png").stat().st_size > 10_000, shot.stderr[-2000:]


def test_review_target_writes_a_qupath_file_per_predicted_slide(finished):
    result = subprocess.run(
        snakemake_command(finished, "--cores", "2", "review"), capture_output=True, text=True, cwd=finished
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for slide in ("demo_1", "demo_2"):
        features = json.loads((finished / "out" / "review" / f"{slide}.geojson").read_text())["features"]
        names = [f["properties"]["classification"]["name"] for f in features]
        # review_tile's default (512 px) covers the 384x512 slide once: one region, and the objects
        assert names.count("Review") == 1 and "foreground" in names
    assert (finished / "out" / "logs" / "review" / "demo_2.log").exists()


def test_second_run_has_nothing_to_do(finished):
    result = snakemake(finished, TINY_CONFIG, "-n")
    assert result.returncode == 0 and scheduled(result) == {}


def test_threshold_change_reruns_only_predict_and_report(finished):
    config = {**TINY_CONFIG, "predict": {**TINY_CONFIG["predict"], "threshold": 0.3}}
    jobs = scheduled(snakemake(finished, config, "-n"))
    assert jobs == {"predict": 2, "report": 1, "all": 1}


def test_epoch_change_retrains_without_reconverting(finished):
    config = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 2}}
    jobs = scheduled(snakemake(finished, config, "-n"))
    assert jobs == {"train": 1, "predict": 2, "report": 1, "all": 1}


def test_loader_workers_or_resume_change_reruns_nothing(finished):
    """train.num_workers and train.resume never change what a run learns: editing them (or a new default)
    retrains nothing and predicts nothing again."""
    config = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "num_workers": 1, "resume": False}}
    assert scheduled(snakemake(finished, config, "-n")) == {}


def test_patch_size_change_reruns_patches_and_downstream_not_convert(finished):
    config = {**TINY_CONFIG, "patches": {**TINY_CONFIG["patches"], "size": 48}}
    jobs = scheduled(snakemake(finished, config, "-n"))
    assert jobs == {"patches": 2, "train": 1, "predict": 2, "report": 1, "all": 1}


def _user_sheet(workdir: Path, extra: bool) -> dict:
    """Config using the demo's files through a user sample sheet (optionally with one more slide)."""
    demo = workdir / "out" / "demo"
    rows = pd.read_csv(demo / "samples.csv", keep_default_na=False)
    if extra:
        rows.loc[len(rows)] = ["extra", "out/demo/demo_2.tiff", "", "test"]
    rows.to_csv(workdir / "sheet.csv", index=False)
    return {**TINY_CONFIG, "demo": {"enabled": False}, "samples": "sheet.csv"}


def test_adding_one_slide_converts_only_that_slide(finished):
    assert scheduled(snakemake(finished, _user_sheet(finished, extra=False), "-n")) == {}
    jobs = scheduled(snakemake(finished, _user_sheet(finished, extra=True), "-n"))
    assert jobs == {"convert": 1, "predict": 1, "report": 1, "all": 1}


@pytest.mark.parametrize(
    "row, message",
    [
        (["demo_0", "out/demo/demo_0.tiff", "out/demo/train.csv", "train"], "duplicate slide_id"),
        (["new", "missing.tiff", "", "test"], "image file not found: missing.tiff"),
        (["new", "out/demo/demo_0.tiff", "", "holdout"], "unknown split 'holdout'"),
    ],
)
def test_bad_sample_sheet_stops_at_parse_time(finished, row, message):
    config = _user_sheet(finished, extra=False)
    sheet = pd.read_csv(finished / "sheet.csv", keep_default_na=False)
    sheet.loc[len(sheet)] = row
    sheet.to_csv(finished / "sheet.csv", index=False)
    result = snakemake(finished, config, "-n")
    assert result.returncode != 0 and message in result.stdout + result.stderr
    assert "sheet.csv" in result.stdout + result.stderr


def test_wrong_type_stops_at_parse_time(finished):
    config = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": "many"}}
    result = snakemake(finished, config, "-n")
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "config.yaml: `train.epochs`: 'many' is not of type 'integer'" in text
    assert "Failed validating" not in text  # one line, not a schema dump


def test_misspelled_config_key_stops_at_parse_time(finished):
    config = {**TINY_CONFIG, "predict": {**TINY_CONFIG["predict"], "treshold": 0.3}}
    result = snakemake(finished, config, "-n")
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "config.yaml: unknown key `predict.treshold` (did you mean `threshold`?)" in text
    assert len([line for line in text.splitlines() if "treshold" in line]) == 1


def test_reordered_config_reruns_nothing(finished):
    """The same values with every section's keys in another order schedule no job."""
    reordered = {
        k: dict(reversed(list(v.items()))) if isinstance(v, dict) else v for k, v in reversed(list(TINY_CONFIG.items()))
    }
    write_config(finished, yaml.dump(reordered, sort_keys=False))
    cmd = snakemake_command(finished, "--cores", "2", "-n")
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=finished)
    assert result.returncode == 0 and scheduled(result) == {}, result.stdout[-2000:]


def test_trained_model_folder_predicts_a_new_cohort(finished):
    """predict.model: a second results folder with a sheet of only the test slide and the first run's
    model folder schedules no patches/train job and reports the first run's metrics."""
    demo = finished / "out" / "demo"
    rows = pd.read_csv(demo / "samples.csv", keep_default_na=False)
    rows[rows["split"] == "test"].to_csv(finished / "cohort.csv", index=False)
    config = {
        **TINY_CONFIG,
        "results": "cohort",
        "demo": {"enabled": False},
        "samples": "cohort.csv",
        "predict": {**TINY_CONFIG["predict"], "model": "out/models/tiny"},
    }
    assert scheduled(snakemake(finished, config, "-n")) == {"convert": 1, "predict": 1, "report": 1, "all": 1}
    result = snakemake(finished, config)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (pd.read_csv(finished / r / "metrics.csv").set_index("slide_id") for r in ("out", "cohort"))
    columns = ["dice", "iou", "precision", "recall", "object_f1", "tp", "fp", "fn"]
    pd.testing.assert_series_equal(second.loc["demo_2", columns], first.loc["demo_2", columns])
    assert not (finished / "cohort" / "patches").exists() and not (finished / "cohort" / "models").exists()
    card = json.loads((finished / "out" / "models" / "tiny" / "model.json").read_text())
    made = json.loads((finished / "cohort" / "provenance.json").read_text())
    assert [m["sha256"] for m in made["models"]] == [card["checkpoints"][0]["sha256"]]
    assert len(made["config_hash"]) == 64 and made["wsiseg_version"]
    missing = {**config, "predict": {**config["predict"], "model": "out/models/none"}}
    result = snakemake(finished, missing, "-n")
    assert result.returncode != 0 and "`predict.model`: out/models/none does not exist" in result.stdout + result.stderr


def test_killed_run_recovers_with_the_default_profile(tmp_path):
    """SIGKILL Snakemake's process group right after training's first epoch checkpoint, rerun through
    workflow/profiles/default (rerun-incomplete): the model is bit for bit the one an uninterrupted
    run of the same training makes, and finished conversions are kept."""
    import os
    import signal
    import time

    import torch

    config = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 2}}
    write_config(tmp_path, config)
    cmd = snakemake_command(tmp_path, "--cores", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = tmp_path / "out" / "models" / "tiny" / "lightning" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the first epoch's checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(last, weights_only=True)["epoch"] == 0, "killed too late: the second epoch had finished"
    converted = sorted(p.stem for p in (tmp_path / "out" / "zarr").glob("*.zarr"))
    assert converted and not (tmp_path / "out" / "submission.csv").exists()
    # what a user does after a crash: remove the stale lock, rerun (the profile adds --rerun-incomplete)
    subprocess.run(cmd + ["--unlock"], check=True, capture_output=True)
    rerun = subprocess.run(
        cmd[:-2] + ["--profile", str(ROOT / "workflow" / "profiles" / "default"), "--cores", "2"],
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    jobs = rerun.stdout + rerun.stderr
    assert (tmp_path / "out" / "submission.csv").exists() and (tmp_path / "out" / "metrics.csv").exists()
    for slide in converted:  # conversions finished before the kill are kept
        assert f"Converting slide {slide} " not in jobs
    assert "resuming the interrupted run" in (tmp_path / "out" / "logs" / "train" / "tiny.log").read_text()
    # the same training, uninterrupted, on the same patch stores
    patches = tmp_path / "out" / "patches"
    train = config["train"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "wsiseg.cli",
            "train",
            "--train",
            str(patches / "demo_0.zarr"),
            "--val",
            str(patches / "demo_1.zarr"),
            "--out-dir",
            str(tmp_path / "uninterrupted"),
            "--encoder-depth",
            str(train["encoder_depth"]),
            "--decoder-channels",
            *map(str, train["decoder_channels"]),
            "--epochs",
            "2",
            "--batch-size",
            str(train["batch_size"]),
            "--accelerator",
            "cpu",
            "--seed",
            str(config["seed"]),
            "--threads",
            "2",
        ],
        check=True,
        capture_output=True,
    )
    resumed = torch.load(tmp_path / "out" / "models" / "tiny" / "model.ckpt", weights_only=True)["state_dict"]
    reference = torch.load(tmp_path / "uninterrupted" / "model.ckpt", weights_only=True)["state_dict"]
    assert resumed.keys() == reference.keys()
    differ = [k for k in reference if not torch.equal(resumed[k], reference[k])]
    assert not differ, f"{len(differ)} of {len(reference)} tensors differ"
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "out" / "models" / "tiny" / "metrics.csv"),
        pd.read_csv(tmp_path / "uninterrupted" / "metrics.csv"),
    )
