import subprocess
import sys

import pytest

from wsiseg.cli import main

STAGES = ["demo", "convert", "patches", "train", "predict", "report"]


def test_help_lists_one_subcommand_per_stage():
    out = subprocess.run([sys.executable, "-m", "wsiseg.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for stage in STAGES:
        assert f"    {stage} " in out


def test_stage_functions_are_importable():
    from wsiseg.convert import convert_slide
    from wsiseg.demo import generate_demo
    from wsiseg.patches import extract_patches
    from wsiseg.predict import predict_slide
    from wsiseg.report import make_report
    from wsiseg.train import train_model

    assert all(callable(f) for f in (convert_slide, generate_demo, extract_patches, predict_slide, make_report, train_model))


def test_cli_convert_reports_bad_input_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.tif"
    bad.write_text("nope")
    assert main(["convert", str(bad), str(tmp_path / "o.zarr")]) == 1
    err = capsys.readouterr().err
    assert "wsiseg convert: error:" in err and "bad.tif" in err


def test_unknown_subcommand_exits_nonzero():
    with pytest.raises(SystemExit) as exc:
        main(["bogus"])
    assert exc.value.code == 2
