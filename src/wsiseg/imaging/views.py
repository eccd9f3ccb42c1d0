"""What a person looks at: overlay figures and the scores table of the HTML report's landing page."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from wsiseg.utils.io import atomic_path

# Outline colours, picked to stand out on H&E pink/purple, on white glass and on each other
# (blue-yellow stays distinct for red-green colour blindness); a black halo keeps both
# readable on light and dark tissue.
PREDICTION_COLOUR = "#00e5ff"  # cyan
TRUTH_COLOUR = "#ffd400"  # yellow


def overlay_title(slide_id: str, dice: float | None) -> str:
    """``slide — Dice 0.934``, or ``slide — no ground truth`` when the slide has none."""
    if dice is None or (isinstance(dice, float) and math.isnan(dice)):
        return f"{slide_id} — no ground truth"
    return f"{slide_id} — Dice {dice:.3f}"


def draw_overlay(
    image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None, title: str, out: str | Path
) -> None:
    """PNG of an RGB ``image`` with the outlines of ``prediction`` (cyan) and ``truth`` (yellow, when
    given) as contrasting lines with a black halo, a legend and ``title``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patheffects as effects
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    h, w = image.shape[:2]
    dpi = 100
    fig, ax = plt.subplots(figsize=(max(w, 320) / dpi + 0.4, h / dpi + 1.0), dpi=dpi, layout="constrained")
    ax.imshow(image, interpolation="nearest")
    handles = []
    # thick truth below, thinner prediction on top: where they agree both stay visible
    layers = [(truth, TRUTH_COLOUR, 3.0, "ground truth"), (prediction, PREDICTION_COLOUR, 1.6, "prediction")]
    for mask, colour, width, name in layers:
        if mask is None:
            continue
        halo = [effects.withStroke(linewidth=width + 2.0, foreground="black")]
        padded = np.pad(np.asarray(mask[:h, :w]) > 0, 1).astype(np.float32)  # outlines close at the image border
        if padded.any():
            ax.contour(
                np.arange(-1, padded.shape[1] - 1),
                np.arange(-1, padded.shape[0] - 1),
                padded,
                levels=[0.5],
                colors=[colour],
                linewidths=width,
            ).set_path_effects(halo)
        handles.append(Line2D([], [], color=colour, linewidth=width, path_effects=halo, label=name))
    ax.set(xlim=(-0.5, w - 0.5), ylim=(h - 0.5, -0.5), xticks=[], yticks=[])
    ax.set_title(title, fontsize=12)
    fig.legend(handles=handles[::-1], loc="outside lower center", ncol=len(handles), frameon=False, fontsize=10)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def _cell(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


SCORES_STYLE = """<style>
#wsiseg-scores { border-collapse: collapse; font-size: 13px; margin: 0.5em 0; width: auto; }
#wsiseg-scores th, #wsiseg-scores td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
#wsiseg-scores th { background: #eee; }
#wsiseg-scores .name { text-align: left; }
#wsiseg-scores tr.mean td { font-weight: bold; background: #f6f6f6; }
</style>
"""


NAME, MEAN = ' class="name"', ' class="mean"'  # text columns; mean rows


# Object metrics shown where the table has them (wsiseg.report.object_scores): (header, column, decimals)
OBJECT_COLUMNS = [
    ("GlaS F1", "glas_f1", 3),
    ("object Dice", "object_dice", 3),
    ("object Hausdorff (px)", "object_hausdorff", 1),
    ("object Hausdorff (µm)", "object_hausdorff_um", 1),
    ("AJI", "aji", 3),
    ("PQ", "pq", 3),
    ("DQ", "dq", 3),
    ("SQ", "sq", 3),
]


def scores_html(table: pd.DataFrame) -> str:
    """HTML table of the scores a person reads first: per slide, per group and overall mean
    Dice, IoU and object F1 (with objects found of true ones), from a ``metrics.csv`` table, and the
    object metrics of :data:`OBJECT_COLUMNS` the table has (a column with no value at all, such as the
    Hausdorff distance in µm of slides without a pixel size, is left out).

    Mean rows (``mean:{group}`` and ``mean``, the Kaggle score) are bold and come last."""
    if not len(table):
        return '<p id="wsiseg-scores">No slide with ground truth: nothing to score.</p>\n'
    names = ["slide_id", "split"] + (["group"] if "group" in table else [])
    columns = [("slide", "slide_id", 3), ("split", "split", 3)] + ([("group", "group", 3)] if "group" in table else [])
    columns += [("Dice", "dice", 3), ("IoU", "iou", 3), ("object F1", "object_f1", 3)]
    columns += [
        c for c in OBJECT_COLUMNS if c[1] in table and pd.to_numeric(table[c[1]], errors="coerce").notna().any()
    ]
    columns += [(f"Dice {c[5:]}", c, 3) for c in table.columns if c.startswith("dice_")]
    head = "".join(f"<th{NAME if key in names else ''}>{html.escape(name)}</th>" for name, key, _ in columns)
    head += "<th>objects found</th>"
    body = []
    for row in table.to_dict("records"):
        label = str(row["slide_id"])
        summary = label == "mean" or label.startswith("mean:")
        if summary:
            row = {**row, "slide_id": "all slides (mean)" if label == "mean" else f"{label[5:]} (mean)", "split": ""}
        cells = "".join(
            f"<td{NAME if key in names else ''}>{_cell(row.get(key), digits)}</td>" for _, key, digits in columns
        )
        found = row.get("objects_matched"), row.get("objects_true")
        cells += (
            "<td>–</td>"
            if any(v is None or pd.isna(v) for v in found)
            else f"<td>{int(found[0])} of {int(found[1])}</td>"
        )
        body.append(f"<tr{MEAN if summary else ''}>{cells}</tr>")
    return (
        SCORES_STYLE
        + f'<table id="wsiseg-scores">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody>\n</table>\n"
    )


def write_scores_html(table: pd.DataFrame, out: str | Path) -> None:
    """Write :func:`scores_html` of ``table`` to ``out`` (an HTML fragment the report's landing page embeds)."""
    with atomic_path(out) as tmp:
        Path(tmp).write_text(scores_html(table), encoding="utf-8")
