"""Replacing an earlier output never loses it: whatever fails part-way through a replace
(a read-only folder inside the old store, a full or flaky file system, a killed job), one
complete store stays at the target path, and the message names where each copy is."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest

from wsiseg.utils.io import MARKER, OutputError, atomic_path, remove_leftovers

LEVELS = ("0", "1", "2")
CHUNKS = ("0.0", "0.1", "1.0", "1.1")


def _host() -> str:
    return socket.gethostname().split(".")[0].replace("-", "_")


def _fill(folder: Path, version: str) -> None:
    """A zarr-v2-shaped store: group metadata, three levels of four chunks, each naming ``version``."""
    folder.mkdir()
    (folder / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (folder / ".zattrs").write_text(json.dumps({"wsiseg": {"source": "slide.tif", "version": version}}))
    for level in LEVELS:
        (folder / level).mkdir()
        (folder / level / ".zarray").write_text("{}")
        for chunk in CHUNKS:
            (folder / level / chunk).write_text(version)


def _write(target: Path, version: str) -> None:
    with atomic_path(target, stage="convert", folder=True) as tmp:
        _fill(tmp, version)


def _complete(folder: Path) -> str | None:
    """The version a complete store at ``folder`` holds; None when anything is missing or mixed."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        attrs = json.loads((folder / ".zattrs").read_text())
        versions = {(folder / level / chunk).read_text() for level in LEVELS for chunk in CHUNKS}
        if not (folder / ".zgroup").is_file() or not all((folder / lv / ".zarray").is_file() for lv in LEVELS):
            return None
    except (OSError, ValueError):
        return None
    version = attrs["wsiseg"]["version"]
    return version if marker == {"stage": "convert", "complete": True} and versions == {version} else None


def _siblings(target: Path) -> list[Path]:
    return sorted(p for p in target.parent.iterdir() if p != target)


def _partial_rmtree(real):
    """An rmtree that deletes the group metadata, the marker and one level, then fails (a flaky file system)."""

    def rmtree(path, *args, **kwargs):
        path = Path(path)
        for name in (".zgroup", MARKER):
            (path / name).unlink(missing_ok=True)
        real(path / "0")
        raise OSError(errno.EIO, "Input/output error", str(path / "1"))

    return rmtree


def test_a_replace_whose_delete_fails_part_way_keeps_the_new_store_and_warns(tmp_path, monkeypatch, caplog):
    target = tmp_path / "s.zarr"
    _write(target, "old")
    monkeypatch.setattr(shutil, "rmtree", _partial_rmtree(shutil.rmtree))
    with caplog.at_level(logging.WARNING, logger="wsiseg.utils.io"):
        _write(target, "new")
    assert _complete(target) == "new"
    (leftover,) = _siblings(target)
    assert leftover.name.startswith(".s.zarr.del-")
    assert "new output is in place" in caplog.text and str(leftover) in caplog.text
    monkeypatch.undo()
    _write(target, "newer")  # the next write of the target removes what is left
    assert _complete(target) == "newer" and _siblings(target) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions (the rmtree test above covers root)")
def test_a_read_only_level_folder_in_the_old_store_loses_nothing(tmp_path, caplog):
    target = tmp_path / "s.zarr"
    _write(target, "old")
    level = target / "1"
    level.chmod(stat.S_IRUSR | stat.S_IXUSR)  # its chunks cannot be deleted
    try:
        with caplog.at_level(logging.WARNING, logger="wsiseg.utils.io"):
            _write(target, "new")
        assert _complete(target) == "new"
        (leftover,) = _siblings(target)
        assert str(leftover) in caplog.text
        assert (leftover / "1" / "0.0").read_text() == "old"  # the part that could not go, no more
        with caplog.at_level(logging.WARNING, logger="wsiseg.utils.io"):
            _write(target, "newer")  # a leftover that still cannot be removed does not block the next write
        assert _complete(target) == "newer"
    finally:
        for folder in tmp_path.glob(".s.zarr.*/1"):
            folder.chmod(stat.S_IRWXU)


def _failing_replace(real, fail):
    """os.replace that raises for the (source, destination) pairs ``fail`` picks."""

    def replace(src, dst, *args, **kwargs):
        if fail(Path(src), Path(dst)):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *args, **kwargs)

    return replace


def test_a_failed_move_aside_leaves_the_earlier_store_untouched(tmp_path, monkeypatch):
    target = tmp_path / "s.zarr"
    _write(target, "old")
    monkeypatch.setattr(os, "replace", _failing_replace(os.replace, lambda src, dst: src == target))
    with pytest.raises(OutputError, match=r"s\.zarr: could not move the earlier output aside .* it is unchanged"):
        _write(target, "new")
    assert _complete(target) == "old" and _siblings(target) == []


def test_a_failed_move_in_puts_the_earlier_store_back(tmp_path, monkeypatch):
    target = tmp_path / "s.zarr"
    _write(target, "old")
    monkeypatch.setattr(
        os, "replace", _failing_replace(os.replace, lambda src, dst: dst == target and ".tmp-" in src.name)
    )
    with pytest.raises(OutputError, match=r"could not move the new output in .* the earlier output is back in place"):
        _write(target, "new")
    assert _complete(target) == "old" and _siblings(target) == []


def test_when_neither_store_can_be_moved_in_the_error_names_both_complete_copies(tmp_path, monkeypatch):
    target = tmp_path / "s.zarr"
    _write(target, "old")
    monkeypatch.setattr(os, "replace", _failing_replace(os.replace, lambda src, dst: dst == target))
    with pytest.raises(OutputError) as info:
        _write(target, "new")
    message = str(info.value)
    copies = {_complete(path): path for path in _siblings(target)}
    assert set(copies) == {"old", "new"} and not target.exists()
    assert f"the earlier output is complete at {copies['old']}, the new one at {copies['new']}" in message
    assert "\n" not in message


def test_a_replace_killed_between_its_renames_is_undone_by_the_next_write(tmp_path):
    target = tmp_path / "s.zarr"
    _write(target, "old")
    aside = tmp_path / f".s.zarr.old-{_host()}-{2**22 + 12345}-0123abcd"  # its process is gone
    target.rename(aside)
    killed_write = tmp_path / f".s.zarr.tmp-{_host()}-{2**22 + 12345}-89abcdef"
    killed_write.mkdir()
    remove_leftovers(target)
    assert _complete(target) == "old" and _siblings(target) == []


def test_an_old_copy_left_beside_a_complete_target_is_removed(tmp_path):
    target = tmp_path / "s.zarr"
    _write(target, "new")
    aside = tmp_path / f".s.zarr.old-{_host()}-{2**22 + 12345}-0123abcd"
    _fill(aside, "old")
    assert remove_leftovers(target) == [aside]
    assert _complete(target) is None or _complete(target) == "new"
    assert _siblings(target) == []


def test_files_are_still_replaced_in_one_rename(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    target.write_text("old")
    monkeypatch.setattr(shutil, "rmtree", _partial_rmtree(shutil.rmtree))  # never reached for a file
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and _siblings(target) == []
