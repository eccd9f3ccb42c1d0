"""The package's shape (ARCHITECTURE.md): layers, no import cycle, old import paths, a CLI that loads no torch,
and stores and checkpoints written before the reorganisation still load."""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tifffile
from support.patches import write_store
from support.paths import ROOT

# Every import path the README, docs, config comments and CHANGELOG have shown users, before and after the
# package was reorganised into subpackages: (module, names it must provide).
DOCUMENTED = [
    ("wsiseg.convert", ["convert_slide", "convert_many"]),
    ("wsiseg.patches", ["extract_patches", "PatchParams"]),
    ("wsiseg.train", ["train_model", "TrainParams", "loader_workers"]),
    ("wsiseg.predict", ["predict_slide", "predict_many", "PredictParams", "precast", "precast_checked"]),
    ("wsiseg.report", ["make_report", "encode_store"]),
    ("wsiseg.demo", ["generate_demo", "DemoSpec"]),
    ("wsiseg.info", ["describe", "format_info"]),
    ("wsiseg.dicomseg", ["write_dicom_seg"]),
    ("wsiseg.rle", ["encode", "decode", "RLEError"]),
    ("wsiseg.resolution", ["PixelSize", "ResolutionError"]),
    ("wsiseg.modelcard", ["resolve_model", "ModelError"]),
    ("wsiseg.errors", ["WsisegError", "SlideError", "MaskError", "StoreError", "ConfigError"]),
    # the flat modules of before, answered by wsiseg._legacy and the packages' forwarding
    ("wsiseg.codecs", ["PlanarJpeg"]),
    ("wsiseg.logs", ["StepTimes", "log_to", "setup_logging"]),
    ("wsiseg.params", ["from_mapping", "SCHEMA"]),
    ("wsiseg.settings", ["TrainParams", "PredictParams"]),
    ("wsiseg.store", ["SlideStore", "read_region", "write_file", "StoreError"]),
    (
        "wsiseg.slide",
        ["SourceSlide", "open_reader", "SlideError", "open_tiff", "MAX_DECODED_PIXELS", "MAX_SEGMENT_BYTES"],
    ),
    ("wsiseg.masks", ["Ring", "open_mask", "MaskError"]),
    ("wsiseg.samples", ["read_samples", "SampleSheetError"]),
    ("wsiseg.layout", ["find_store"]),
    ("wsiseg.bands", ["BandReader"]),
    ("wsiseg.tilecopy", ["copy_plan"]),
    ("wsiseg.prefetch", ["prefetch"]),
    ("wsiseg.checks", ["ConfigError"]),
    ("wsiseg.configdoc", ["render"]),
    ("wsiseg.folds", ["assign_folds"]),
    ("wsiseg.datasets", ["dataset_samples"]),
    ("wsiseg.backends", ["choose_backend"]),
    ("wsiseg.model", ["load_model", "SegmentationModule"]),
    ("wsiseg.data", ["to_tensor"]),
    ("wsiseg.predstore", ["Prediction"]),
]


@pytest.mark.parametrize(("module", "names"), DOCUMENTED, ids=[m for m, _ in DOCUMENTED])
def test_every_documented_import_path_works(module, names):
    imported = importlib.import_module(module)
    missing = [n for n in names if not hasattr(imported, n)]
    assert not missing, f"{module} lacks {missing}"


def test_old_and_new_paths_are_one_module():
    import wsiseg.codecs
    import wsiseg.store.codecs

    assert wsiseg.codecs is wsiseg.store.codecs
    assert wsiseg.store.codecs.__spec__.name == "wsiseg.store.codecs"  # the alias left the module's own spec


def test_layer_contracts_hold():
    """import-linter's contracts in pyproject.toml: each layer imports only the layers below it."""
    pytest.importorskip("importlinter")
    out = subprocess.run(["lint-imports", "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_import_graph_has_no_cycle():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("wsiseg")
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for other in sorted(edges[module]):
            if state.get(other) == 1:
                return path + [module, other]
            if not state.get(other):
                cycle = visit(other, path + [module])
                if cycle:
                    return cycle
        state[module] = 2
        return None

    for module in sorted(edges):
        if not state.get(module):
            cycle = visit(module, [])
            assert cycle is None, " -> ".join(cycle)


def test_cli_help_loads_no_torch():
    code = (
        "import sys\nfrom wsiseg.cli import build_parser\n"
        "for stage in (None, 'convert', 'info', 'samples', 'train', 'predict'):\n"
        "    build_parser(stage)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'wsiseg.nn.module' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


PRE_REORGANISATION = "5c87c19"  # the last commit with the flat package


def _old_source(tmp_path):
    """src/ (and the schema it read from workflow/schemas/) of the last commit before the package was reorganised,
    or skip without git history."""
    try:
        blob = subprocess.run(
            ["git", "archive", PRE_REORGANISATION, "src", "workflow/schemas"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip(f"needs git history with commit {PRE_REORGANISATION} (a shallow clone has none)")
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(tmp_path / "old", filter="data")
    return tmp_path / "old" / "src"


def test_stores_and_checkpoints_written_before_the_move_load_unchanged(tmp_path):
    """A slide store and a checkpoint written by the flat package's code load and predict with today's."""
    from wsiseg.predict import PredictParams, predict_slide
    from wsiseg.store.prediction import Prediction
    from wsiseg.store.slide import SlideStore

    old = _old_source(tmp_path)
    rng = np.random.default_rng(0)
    image = np.full((200, 260, 3), 230, np.uint8)
    image[40:160, 60:200] = rng.integers(90, 180, size=(120, 140, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", image, photometric="rgb", tile=(64, 64))
    train, val = write_store(tmp_path / "train.zarr", 16, seed=1), write_store(tmp_path / "val.zarr", 8, seed=2)
    env = {"PYTHONPATH": str(old), "PATH": "/usr/bin:/bin"}
    run = [sys.executable, "-m", "wsiseg.cli"]
    subprocess.run([*run, "convert", "s.tif", "s.zarr", "--chunk", "64"], cwd=tmp_path, env=env, check=True)
    train_args = ["train", "--train", str(train), "--val", str(val), "--out-dir", "model", "--epochs", "1"]
    train_args += ["--batch-size", "8", "--encoder-depth", "3", "--decoder-channels", "32", "16", "8"]
    subprocess.run([*run, *train_args, "--accelerator", "cpu"], cwd=tmp_path, env=env, check=True)

    store = SlideStore(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.read_image(0, 0, (200, 260)), image)
    params = PredictParams(tile=128, overlap=32, batch_size=2)
    out = predict_slide(tmp_path / "s.zarr", tmp_path / "model" / "model.ckpt", tmp_path / "p.zarr", params)
    assert Prediction(out).shape == (200, 260)


def test_code_is_linted_and_formatted():
    """ruff's rules and format (pyproject.toml) hold for the package, tests, workflow scripts and benchmarks."""
    pytest.importorskip("ruff")
    paths = ["src", "tests", "workflow/scripts", "benchmarks", "docs/hooks"]
    check = subprocess.run([sys.executable, "-m", "ruff", "check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    form = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert form.returncode == 0, form.stdout


def test_wheel_ships_the_schema_so_convert_keeps_its_options(tmp_path):
    """A non-editable install (a wheel in a fresh venv, away from the repository) builds every schema option."""
    import venv

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("wsiseg-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # the wheel's wsiseg, with this environment's dependencies (PyYAML, ...) behind it; run outside the repository
    deps = [p for p in sys.path if p.endswith("site-packages")]
    code = f"import sys; sys.path += {deps!r}; from wsiseg.cli import main; main(['convert', '--help'])"
    out = subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert str(ROOT / "src") not in out.stdout + out.stderr
    for option in ("--compression", "--chunk", "--reader", "--uint16", "--channels", "--default-mpp"):
        assert option in out.stdout, f"{option} missing from `wsiseg convert --help` of the installed wheel"
    where = subprocess.run(
        [python, "-c", f"import sys; sys.path += {deps!r}; import wsiseg; print(wsiseg.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(env_dir) in where, where
