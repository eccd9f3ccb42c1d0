"""Object-level metrics (GlaS F1, object Dice and Hausdorff; AJI; PQ): hand-computed cases, edge cases, and
straightforward per-object loops written here from the papers' definitions on random label images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from wsiseg.imaging.objects import (
    ObjectOverlap,
    aggregated_jaccard_index,
    glas_f1,
    object_dice,
    object_hausdorff,
    object_metrics,
    panoptic_quality,
    relabel,
)


def split_and_merge() -> tuple[np.ndarray, np.ndarray]:
    """(truth, prediction) 16 x 16: G1 split in two halves, G2 and G3 merged into one object, a false positive."""
    truth = np.zeros((16, 16), np.int32)
    truth[0:4, 0:10] = 1  # G1: 40 px
    truth[6:10, 0:4] = 2  # G2: 16 px
    truth[6:10, 5:9] = 3  # G3: 16 px
    pred = np.zeros_like(truth)
    pred[0:4, 0:5] = 1  # S1: 20 px, left half of G1
    pred[0:4, 5:10] = 2  # S2: 20 px, right half of G1 (touches S1)
    pred[6:10, 0:9] = 3  # S3: 36 px, G2 + G3 + the 4 px between them
    pred[12:14, 12:14] = 4  # S4: 4 px, overlaps nothing
    return truth, pred


def detections() -> tuple[np.ndarray, np.ndarray]:
    """(truth, prediction) 16 x 16: two good matches, a missed object and a false positive."""
    truth = np.zeros((16, 16), np.int32)
    truth[0:4, 0:5] = 1  # G1: 20 px
    truth[6:10, 6:10] = 2  # G2: 16 px
    truth[12:14, 0:2] = 3  # G3: 4 px, missed
    pred = np.zeros_like(truth)
    pred[0:4, 0:4] = 1  # S1: 16 px inside G1: IoU 16/20 = 0.8
    pred[6:10, 7:10] = 2  # S2: 12 px inside G2: IoU 12/16 = 0.75
    pred[12:14, 10:12] = 3  # S3: 4 px, false positive
    return truth, pred


def test_split_and_merge_hand_computed():
    truth, pred = split_and_merge()
    o = ObjectOverlap(truth, pred)
    assert (o.n_truth, o.n_pred) == (3, 4)
    # GlaS F1: S1 and S2 each cover 20 / 40 = exactly half of G1 (not more): false positives; S3 overlaps G2 and
    # G3 by 16 px each (tie: G2), covering all of it: TP; S4 FP.  TP 1, F1 = 2 * 1 / (3 + 4)
    assert glas_f1(truth, pred) == pytest.approx(2 / 7)
    # object Dice, truth side (areas 40, 16, 16 of 72): G1 with S1 (tie with S2) 2*20/(40+20) = 2/3,
    # G2 and G3 with S3 2*16/(16+36) = 8/13 each: (40*2/3 + 16*8/13 + 16*8/13) / 72 = 1808/2808;
    # prediction side (areas 20, 20, 36, 4 of 80): S1, S2 2/3, S3 8/13, S4 0:
    # (20*2/3 + 20*2/3 + 36*8/13 + 0) / 80 = 1904/3120; object Dice = half the sum
    assert object_dice(truth, pred) == pytest.approx(0.5 * (1808 / 2808 + 1904 / 3120))
    # AJI: G1's highest IoU is S1 (20/40, tie with S2): 20 / 40; G2 and G3 both take S3: 16 / 36 each
    # (S3's area counts in both unions); unused S2 (20 px) and S4 (4 px) join the denominator:
    # (20 + 16 + 16) / (40 + 36 + 36 + 20 + 4) = 52 / 136
    assert aggregated_jaccard_index(truth, pred) == pytest.approx(52 / 136)
    # PQ: no pair has IoU > 0.5 (0.5, 0.5, 16/36, 16/36): DQ 0, SQ 0 (nothing matched), PQ 0
    assert panoptic_quality(truth, pred) == {"pq": 0.0, "dq": 0.0, "sq": 0.0}
    assert o.matches(0.4) == 4 and o.matches(0.5) == 0


def test_detections_hand_computed():
    truth, pred = detections()
    # GlaS F1: S1 covers 16/20 of G1, S2 12/16 of G2 (both > 1/2): TP 2; S3 FP; F1 = 2 * 2 / (3 + 3)
    assert glas_f1(truth, pred) == pytest.approx(2 / 3)
    # PQ: TP 2 (IoU 0.8, 0.75), FP 1, FN 1: DQ = 2 / (2 + 1/2 + 1/2) = 2/3, SQ = (0.8 + 0.75) / 2 = 0.775
    assert panoptic_quality(truth, pred) == pytest.approx({"pq": 2 / 3 * 0.775, "dq": 2 / 3, "sq": 0.775})
    # AJI: G1-S1 16 / 20, G2-S2 12 / 16, G3 overlaps nothing (+4 px), S3 unused (+4 px): 28 / 44
    assert aggregated_jaccard_index(truth, pred) == pytest.approx(28 / 44)
    # object Dice: truth side G1 2*16/36 = 8/9 (w 20/40), G2 2*12/28 = 6/7 (w 16/40), G3 0;
    # prediction side S1 8/9 (w 16/32), S2 6/7 (w 12/32), S3 0
    dice_truth = (20 * 8 / 9 + 16 * 6 / 7) / 40
    dice_pred = (16 * 8 / 9 + 12 * 6 / 7) / 32
    assert object_dice(truth, pred) == pytest.approx(0.5 * (dice_truth + dice_pred))
    # object Hausdorff: G1-S1 1 (G1's column 4 is 1 from S1's column 3), G2-S2 1 (column 6 to 7).
    # G3 (rows 12-13, cols 0-1) overlaps nothing: nearest by Hausdorff of S1 (sqrt(12^2 + 2^2): S1's (0, 3) to
    # G3's (12, 1)), S2 (10: (6, 9) to (12, 1)) and S3 (10: (12, 0) to (12, 10)) is 10.
    # S3 (rows 12-13, cols 10-11) overlaps nothing: G2 is nearest, sqrt(6^2 + 4^2) (G2's (6, 6) to S3's (12, 10)),
    # as G3 is 10 and G1 farther.  Truth side (20*1 + 16*1 + 4*10) / 40, prediction side (16*1 + 12*1 + 4*sqrt52) / 32
    expected = 0.5 * ((20 + 16 + 40) / 40 + (16 + 12 + 4 * math.sqrt(52)) / 32)
    assert object_hausdorff(truth, pred) == pytest.approx(expected)
    assert object_metrics(truth, pred)["object_hausdorff"] == pytest.approx(expected)


def test_hausdorff_sees_the_farthest_pixel_inside_an_object():
    """A filled gland against a ring-shaped prediction (lumen missed): the gland's centre, far from every
    boundary pixel of both, is what sets the distance."""
    yy, xx = np.mgrid[:41, :41]
    radius = np.hypot(yy - 20, xx - 20)
    truth = (radius <= 15).astype(np.uint8)
    ring = ((radius <= 15) & (radius > 10)).astype(np.uint8)
    nearest_ring = distance_transform_edt(ring == 0)[20, 20]  # centre to the ring's inner edge, about 10
    assert object_hausdorff(truth, ring) == pytest.approx(nearest_ring)
    assert object_dice(truth, ring) == pytest.approx(2 * ring.sum() / (truth.sum() + ring.sum()))


def test_empty_images():
    empty = np.zeros((8, 8), np.int32)
    some = empty.copy()
    some[2:4, 2:4] = 7
    perfect = {"glas_f1": 1.0, "object_dice": 1.0, "object_hausdorff": 0.0, "aji": 1.0, "pq": 1.0, "dq": 1.0, "sq": 1.0}
    assert object_metrics(empty, empty) == perfect
    assert object_metrics(some, some) == perfect
    for truth, pred in ((some, empty), (empty, some)):  # nothing predicted; nothing to find
        scores = object_metrics(truth, pred)
        assert math.isnan(scores.pop("object_hausdorff"))  # no counterpart at all: undefined
        assert scores == {"glas_f1": 0.0, "object_dice": 0.0, "aji": 0.0, "pq": 0.0, "dq": 0.0, "sq": 0.0}


def test_relabel_keeps_order_and_accepts_any_ids():
    labels = np.array([[0, 9, 9], [4, 0, 1_000_000_000_000]], np.int64)
    compact, n = relabel(labels)
    assert n == 3 and compact.tolist() == [[0, 2, 2], [1, 0, 3]] and compact.dtype == np.int32
    assert relabel(np.array([[True, False]]))[1] == 1
    with pytest.raises(ValueError, match="instance ids"):
        relabel(np.array([[-1, 0]]))
    truth, pred = detections()
    assert object_metrics(truth * 5 + (truth > 0) * 11, pred * 3) == object_metrics(truth, pred)


# --- straightforward implementations from the papers' definitions, object by object ---


def masks(labels: np.ndarray) -> dict[int, np.ndarray]:
    return {int(i): labels == i for i in np.unique(labels) if i}


def loop_aji(truth: np.ndarray, pred: np.ndarray) -> float:
    """Kumar et al. 2017, Algorithm 1, with HoVer-Net's handling of a truth object that overlaps nothing."""
    g, s = masks(truth), masks(pred)
    if not g and not s:
        return 1.0
    inter = union = 0
    used = set()
    for gi in g.values():
        ious = {j: (gi & sj).sum() / (gi | sj).sum() for j, sj in s.items()}
        j = max(ious, key=lambda k: (ious[k], -k)) if ious else None  # highest IoU, lowest id on ties
        if j is None or ious[j] == 0:
            union += gi.sum()
            continue
        inter += (gi & s[j]).sum()
        union += (gi | s[j]).sum()
        used.add(j)
    union += sum(sj.sum() for j, sj in s.items() if j not in used)
    return inter / union


def loop_pq(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Kirillov et al. 2019: pairs with IoU > 0.5 match."""
    g, s = masks(truth), masks(pred)
    if not g and not s:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0}
    ious = [(gi & sj).sum() / (gi | sj).sum() for gi in g.values() for sj in s.values()]
    matched = [v for v in ious if v > 0.5]
    tp, fp, fn = len(matched), len(s) - len(matched), len(g) - len(matched)
    dq = tp / (tp + fp / 2 + fn / 2)
    sq = sum(matched) / tp if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq}


def most_overlapping(obj: np.ndarray, others: dict[int, np.ndarray]) -> int | None:
    counts = {j: (obj & o).sum() for j, o in others.items()}
    best = max(counts, key=lambda k: (counts[k], -k), default=None)
    return best if best is not None and counts[best] > 0 else None


def loop_glas_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """GlaS: a segmented object is a TP when its most-overlapping gland is more than half covered by it."""
    g, s = masks(truth), masks(pred)
    if not g and not s:
        return 1.0
    tp = 0
    for sj in s.values():
        i = most_overlapping(sj, g)
        tp += i is not None and (sj & g[i]).sum() > g[i].sum() / 2
    return 2 * tp / (len(g) + len(s))


def full_hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Hausdorff distance between two pixel sets, from distance transforms over the whole image."""
    return max(distance_transform_edt(~b)[a].max(), distance_transform_edt(~a)[b].max())


def loop_glas_object(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """GlaS object Dice and object Hausdorff: area-weighted over both sides, with the most-overlapping
    counterpart (Dice 0 / nearest object by Hausdorff when none overlaps)."""
    g, s = masks(truth), masks(pred)
    dice = hausdorff = 0.0
    for own, other in ((g, s), (s, g)):
        total = sum(o.sum() for o in own.values())
        for obj in own.values():
            j = most_overlapping(obj, other)
            if j is not None:
                dice += obj.sum() / total * 2 * (obj & other[j]).sum() / (obj.sum() + other[j].sum())
            distance = (
                full_hausdorff(obj, other[j]) if j is not None else min(full_hausdorff(obj, o) for o in other.values())
            )
            hausdorff += obj.sum() / total * distance
    return dice / 2, hausdorff / 2


def random_labels(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    """Overlapping random discs and rectangles (later ones cover earlier ones), non-consecutive ids."""
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for k in range(count):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        r = rng.integers(2, 9)
        if rng.random() < 0.5:
            region = np.hypot(yy - y, xx - x) <= r
        else:
            region = (abs(yy - y) <= r) & (abs(xx - x) <= rng.integers(1, 9))
        labels[region] = 3 * k + 5
    return labels


@pytest.mark.parametrize("seed", range(12))
def test_matches_loops_on_random_label_images(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(20, 50)), int(rng.integers(20, 50)))
    truth = random_labels(rng, shape, int(rng.integers(1, 9)))
    pred = random_labels(rng, shape, int(rng.integers(1, 9)))
    if seed % 4 == 0:  # a prediction close to the truth, so that pairs match
        pred = np.where(rng.random(shape) < 0.1, 0, truth)
    o = ObjectOverlap(truth, pred)
    assert o.aji() == pytest.approx(loop_aji(truth, pred))
    assert o.panoptic() == pytest.approx(loop_pq(truth, pred))
    assert o.glas_f1() == pytest.approx(loop_glas_f1(truth, pred))
    dice, hausdorff = loop_glas_object(truth, pred)
    assert o.object_dice() == pytest.approx(dice)
    assert o.object_hausdorff() == pytest.approx(hausdorff)
    # symmetric in truth and prediction: PQ, object Dice and object Hausdorff (GlaS F1 and AJI are not)
    swapped = ObjectOverlap(pred, truth)
    assert swapped.panoptic() == pytest.approx(o.panoptic())
    assert swapped.object_dice() == pytest.approx(o.object_dice())
    assert swapped.object_hausdorff() == pytest.approx(o.object_hausdorff())
