"""Log files read as plain lines: progress without carriage returns or terminal escape codes."""

from __future__ import annotations

import logging
import subprocess
import sys

from wsiseg.utils.logs import PlainProgress, progress


def test_progress_writes_plain_periodic_lines(caplog):
    caplog.set_level(logging.INFO)
    items = list(PlainProgress(range(4), desc="convert s", unit="block", interval=0.0))
    assert items == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records if r.name == "wsiseg.progress"]
    assert lines[0].startswith("convert s: 1/4 block (25%)") and lines[-1].startswith("convert s: 4/4 block (100%)")
    assert lines[-1].endswith("done") and len(lines) == 4


def test_quiet_between_intervals(caplog):
    caplog.set_level(logging.INFO)
    bar = PlainProgress(total=1000, desc="predict s", unit="tile row", interval=3600)
    for _ in range(1000):
        bar.update()
    bar.close()
    assert len([r for r in caplog.records if r.name == "wsiseg.progress"]) == 1  # the final line only


def test_log_files_get_plain_lines_not_bars(tmp_path):
    """What a stage writes to results/logs/ (stderr is a file there) has no \\r and no escape codes."""
    log = tmp_path / "stage.log"
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr);"
        "from wsiseg.utils.logs import progress; [None for _ in progress(range(50), desc='patches s', unit='patch')]"
    )
    with open(log, "w") as handle:
        subprocess.run([sys.executable, "-c", code], stderr=handle, check=True)
    text = log.read_text()
    assert "patches s: 50/50 patch (100%)" in text
    assert "\r" not in text and "\x1b" not in text
    assert type(progress(range(3))).__name__ == ("tqdm" if sys.stderr.isatty() else "PlainProgress")
