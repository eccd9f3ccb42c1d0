"""Safe outputs: a stage replaces only its own earlier output and cleans up only its own leftovers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from wsiseg.utils.io import MARKER, OutputError, atomic_path, check_output, output_stage, remove_leftovers


def _host() -> str:
    return socket.gethostname().split(".")[0].replace("-", "_")


def test_folder_output_gets_its_stage_marker_and_is_replaced_by_the_same_stage(tmp_path):
    target = tmp_path / "s.zarr"
    with atomic_path(target, stage="convert", folder=True) as tmp:
        tmp.mkdir()
        (tmp / "data").write_text("one")
    assert output_stage(target) == "convert"
    with atomic_path(target, stage="convert", folder=True) as tmp:
        tmp.mkdir()
        (tmp / "data").write_text("two")
    assert (target / "data").read_text() == "two"
    with pytest.raises(OutputError, match="s.zarr: holds a wsiseg convert output, not a predict output"):
        check_output(target, "predict", folder=True)


def test_failed_write_leaves_the_earlier_output_and_no_temporary(tmp_path):
    target = tmp_path / "s.zarr"
    with atomic_path(target, stage="convert", folder=True) as tmp:
        tmp.mkdir()
        (tmp / "data").write_text("complete")
    with pytest.raises(RuntimeError), atomic_path(target, stage="convert", folder=True) as tmp:
        tmp.mkdir()
        raise RuntimeError("killed half way")
    assert (target / "data").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


@pytest.mark.parametrize("make", ["folder", "zarr-without-marker"])
def test_foreign_folders_are_never_replaced(tmp_path, make):
    target = tmp_path / "out.zarr"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    if make == "zarr-without-marker":  # someone else's zarr store
        (target / ".zattrs").write_text(json.dumps({"multiscales": []}))
    with pytest.raises(OutputError, match="out.zarr: exists and is not a wsiseg output"):
        with atomic_path(target, stage="convert", folder=True) as tmp:
            tmp.mkdir()
    assert (target / "notes.txt").read_text() == "precious"


def test_stores_written_before_markers_are_recognised_by_their_metadata(tmp_path):
    convert = tmp_path / "c.zarr"
    convert.mkdir()
    (convert / ".zattrs").write_text(json.dumps({"wsiseg": {"slide_id": "c", "source": "c.tif"}}))
    predict = tmp_path / "p.zarr"
    predict.mkdir()
    (predict / ".zattrs").write_text(json.dumps({"slide_id": "p", "checkpoints": ["m.ckpt"]}))
    assert output_stage(convert) == "convert" and output_stage(predict) == "predict"
    assert check_output(convert, "convert", folder=True) == convert
    with pytest.raises(OutputError):
        check_output(predict, "convert", folder=True)


@pytest.mark.parametrize(
    "output, message",
    [
        ("in/slide.tif", "the output is the input"),
        ("in", "would contain the input"),
        ("in/slide.tif/x.zarr", "lies inside the input"),
    ],
)
def test_outputs_overlapping_inputs_are_refused(tmp_path, output, message):
    (tmp_path / "in").mkdir()
    source = tmp_path / "in" / "slide.tif"
    source.write_bytes(b"slide")
    with pytest.raises(OutputError, match=message):
        check_output(tmp_path / output, "convert", inputs=[source])
    assert source.read_bytes() == b"slide"


def test_only_this_targets_dead_leftovers_are_removed(tmp_path):
    target = tmp_path / "s.zarr"
    dead = tmp_path / f".s.zarr.tmp-{_host()}-{2**22 + 12345}-0123abcd"  # no such pid
    alive = tmp_path / f".s.zarr.tmp-{_host()}-{os.getpid()}-89abcdef"  # a write still running
    old_style = tmp_path / ".s.zarr.tmp-fedcba98"
    other = tmp_path / f".t.zarr.tmp-{_host()}-{2**22 + 12345}-0123abcd"  # another slide's
    users = tmp_path / ".s.zarr.tmp-notes"  # not our naming
    for path in (dead, alive, old_style, other, users):
        path.mkdir()
    removed = remove_leftovers(target)
    assert sorted(removed) == sorted([dead, old_style])
    assert alive.exists() and other.exists() and users.exists()


def test_a_killed_conversion_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (4096, 4096, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(256, 256), photometric="rgb", compression="zlib")
    cmd = [sys.executable, "-m", "wsiseg.cli", "convert", "big.tif", "big.zarr", "--chunk", "128", "--workers", "1"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 60
    while not list(tmp_path.glob(".big.zarr.tmp-*/0")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "conversion ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".big.zarr.tmp-*")) and not (tmp_path / "big.zarr").exists()
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    assert not list(tmp_path.glob(".big.zarr.tmp-*"))
    assert output_stage(tmp_path / "big.zarr") == "convert" and (tmp_path / "big.zarr" / MARKER).exists()


def test_training_never_empties_a_folder_it_did_not_write(tmp_path):
    from wsiseg.train import resume_checkpoint

    work = tmp_path / "model" / "lightning"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="lightning: exists and was not written by wsiseg train"):
        resume_checkpoint(work, "key")
    assert (work / "notes.txt").read_text() == "mine"
    (work / "notes.txt").unlink()
    assert resume_checkpoint(work, "key") is None and (work / "run.json").exists()  # empty: ours now


def test_training_output_folder_may_not_overlap_the_patch_stores(tmp_path):
    from wsiseg.train import TrainParams, train_model

    store = tmp_path / "p.zarr"
    store.mkdir()
    with pytest.raises(OutputError, match="lies inside the input"):
        train_model([store], [store], store / "model", TrainParams(epochs=1))
