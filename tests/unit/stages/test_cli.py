import subprocess
import sys

import pytest
from support.paths import ROOT

from wsiseg.cli import main
from wsiseg.errors import SlideError

STAGES = ["demo", "convert", "patches", "train", "predict", "report", "dicomseg"]


def test_help_lists_one_subcommand_per_stage():
    out = subprocess.run(
        [sys.executable, "-m", "wsiseg.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for stage in STAGES:
        assert f"    {stage} " in out


def test_stage_functions_are_importable():
    from wsiseg.convert import convert_slide
    from wsiseg.demo import generate_demo
    from wsiseg.patches import extract_patches
    from wsiseg.predict import predict_slide
    from wsiseg.report import make_report
    from wsiseg.train import train_model

    assert all(
        callable(f) for f in (convert_slide, generate_demo, extract_patches, predict_slide, make_report, train_model)
    )


def test_cli_convert_reports_bad_input_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.tif"
    bad.write_text("nope")
    assert main(["convert", str(bad), str(tmp_path / "o.zarr")]) == 1
    err = capsys.readouterr().err
    assert "wsiseg convert: error:" in err and "bad.tif" in err


@pytest.mark.parametrize(
    ("raised", "one_line"),
    [
        (lambda: SlideError("s.tif: not a TIFF"), True),
        (lambda: FileNotFoundError(2, "No such file or directory", "s.tif"), True),
        (lambda: ValueError("operands could not be broadcast together"), False),  # numpy's: a bug
        (lambda: ZeroDivisionError("division by zero"), False),
    ],
    ids=["wsiseg-error", "os-error", "plain-value-error", "other-bug"],
)
def test_user_errors_are_one_line_and_bugs_keep_their_traceback(raised, one_line, monkeypatch, capsys):
    import wsiseg.info

    def describe(path):
        raise raised()

    monkeypatch.setattr(wsiseg.info, "describe", describe)
    if one_line:
        assert main(["info", "s.tif"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("wsiseg info: error:") and "s.tif" in err and "\n" not in err
    else:
        with pytest.raises(type(raised())):
            main(["info", "s.tif"])


def test_unknown_subcommand_exits_nonzero():
    with pytest.raises(SystemExit) as exc:
        main(["bogus"])
    assert exc.value.code == 2


SECTIONS = {"convert": "convert", "patches": "patches", "train": "train", "predict": "predict"}


def _effective_config() -> dict:
    """config/config.yaml with the schema's defaults filled in (what a workflow run uses)."""

    import yaml

    root = ROOT
    schema = yaml.safe_load((root / "workflow" / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    return {
        section: {
            k: config.get(section, {}).get(k, spec.get("default"))
            for k, spec in schema["properties"][section]["properties"].items()
        }
        for section in SECTIONS.values()
    }


def _actions(stage: str):
    from wsiseg.cli import build_parser

    parser = build_parser(stage)
    sub = next(a for a in parser._actions if a.dest == "command")
    return [a for a in sub.choices[stage]._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("stage", list(SECTIONS))
def test_cli_defaults_equal_the_default_config(stage):
    """`wsiseg STAGE` without options does what the workflow does with config/config.yaml."""
    config = _effective_config()[SECTIONS[stage]]
    compared = 0
    for action in _actions(stage):
        if action.dest not in config:
            continue
        default = list(action.default) if isinstance(action.default, tuple) else action.default
        expected = config[action.dest]
        if isinstance(expected, dict) and default is None:  # NAME=VALUE flags: None = the dataclass default
            continue
        assert default == expected, f"wsiseg {stage} --{action.dest}: CLI default {default!r}, config {expected!r}"
        compared += 1
    assert compared >= 5


@pytest.mark.parametrize("stage", STAGES)
def test_every_option_explains_itself(stage):
    for action in _actions(stage):
        if action.dest == "version":
            continue
        text = (action.help or "").split("(default:")[0].strip()
        assert text, f"wsiseg {stage} {action.option_strings[0]} has no help text"


def _report_folders(tmp_path, predicted: tuple[str, ...]):
    """A sample sheet (a, b: test; c: train), a slide store folder per slide and prediction stores of
    ``predicted`` (empty folders: the report stops on a missing store before it reads any)."""
    sheet = tmp_path / "samples.csv"
    sheet.write_text("slide_id,image,mask,split\na,a.tif,,test\nb,b.tif,,test\nc,c.tif,c.png,train\n")
    for slide in "abc":
        (tmp_path / "zarr" / f"{slide}.zarr").mkdir(parents=True)
    (tmp_path / "predictions").mkdir()
    for slide in predicted:
        (tmp_path / "predictions" / f"{slide}.zarr").mkdir()
    return [
        "report",
        "--samples",
        str(sheet),
        "--slides",
        str(tmp_path / "zarr"),
        "--predictions",
        str(tmp_path / "predictions"),
        "--out-dir",
        str(tmp_path / "out"),
    ]


def test_report_stops_on_a_test_slide_without_a_prediction_store(tmp_path, capsys):
    """A val/test slide whose store is missing is an error naming it and the path, not a report without it;
    a train slide is reported only when it was predicted, so its missing store is no error."""
    assert main(_report_folders(tmp_path, predicted=("a",))) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsiseg report: error: slide b:") and "\n" not in err
    assert str(tmp_path / "predictions" / "b.zarr") in err and "does not exist" in err
    assert not (tmp_path / "out").exists()


def test_report_without_any_prediction_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no predictions for the slides of .*samples.csv"):
        main(_report_folders(tmp_path, predicted=()))
