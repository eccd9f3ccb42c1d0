"""Object-level segmentation metrics of two instance label images (0 = background, any other value an object id).

Gland metrics of the GlaS challenge (Sirinukunwattana et al. 2017, "Gland segmentation in colon histology
images: The GlaS challenge contest", Medical Image Analysis 35: 489-502), as its evaluation code computes them:

- :meth:`ObjectOverlap.glas_f1`: each segmented object is paired with the ground-truth object it overlaps most
  (in pixels); it is a true positive when that intersection covers **more than half of the ground-truth
  object** (strictly, as the challenge's code: at exactly one half two segments could both claim one gland).
  Other segmented objects are false positives, unclaimed ground-truth objects false negatives.
- :meth:`ObjectOverlap.object_dice`: half the sum of (a) over ground-truth objects, weighted by their share of
  the ground-truth area, the Dice with the segmented object overlapping each most (0 when none overlaps) and
  (b) the same over segmented objects with their ground-truth counterparts.
- :meth:`ObjectOverlap.object_hausdorff`: the same weighting of the (exact, Euclidean, pixel-centre) Hausdorff
  distance between each object and the one overlapping it most, or, when none overlaps, the one nearest by
  Hausdorff distance.

Nuclei metrics:

- :meth:`ObjectOverlap.aji`: Aggregated Jaccard Index (Kumar et al. 2017, IEEE TMI 36(7): 1550-1560): each
  ground-truth object takes the predicted object of highest IoU with it; AJI = sum of their intersections /
  (sum of their unions + the areas of the predicted objects no ground-truth object took).  A ground-truth
  object that overlaps nothing adds its own area to the denominator (as HoVer-Net's ``get_fast_aji``).
- :meth:`ObjectOverlap.panoptic`: panoptic quality (Kirillov et al. 2019, CVPR; for nuclei Graham et al. 2019,
  HoVer-Net, Medical Image Analysis 58): pairs with IoU > 0.5 match (uniquely);
  DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of the matched pairs, PQ = DQ x SQ.

Empty images: with no object on either side every score is perfect (F1, Dice, AJI, PQ, DQ, SQ 1; Hausdorff 0);
with objects on one side only, the scores are 0 and the Hausdorff distance is undefined: NaN (the challenge's
code gives infinity).  SQ is 0 when nothing matches (so PQ = DQ x SQ stays exact, as HoVer-Net's code).

Everything is computed from pair counts (one ``bincount``/``unique`` over the overlapping pixels) and, for the
Hausdorff distance, from each object's boundary pixels (KD-trees) plus its pixels inside the other object's
bounding box: the farthest pixel of A from B is either on A's boundary or inside B's bounding box, so this is
exact at a fraction of the cost of a distance transform over all pixels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

DENSE_PAIRS = 1 << 22  # pair keys counted with bincount (dense) below this many, with unique (sorted) above


def relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Object ids renumbered 1..n (int32, in the order of the original ids; 0 stays background) and n."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"an instance label image is a 2-D integer array, not {labels.dtype} {labels.shape}")
    if labels.size == 0:
        return np.zeros(labels.shape, np.int32), 0
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"instance ids are >= 0 (0 = background), found {low}")
    if high <= max(4 * labels.size, 1 << 20):
        present = np.bincount(labels.ravel(), minlength=high + 1) > 0
        present[0] = False
        n = int(present.sum())
        if n == high:  # already 1..n
            return labels.astype(np.int32, copy=False), n
        lut = np.cumsum(present).astype(np.int32)
        lut[0] = 0
        return lut[labels], n
    ids, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape).astype(np.int32)
    return (compact, len(ids) - 1) if ids[0] == 0 else (compact + 1, len(ids))


def _first_per_group(group: np.ndarray, *keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group values, indices): for each value of ``group``, the index of its first row when rows are sorted by
    ``keys`` (the first key most significant)."""
    order = np.lexsort((*keys[::-1], group))
    values, first = np.unique(group[order], return_index=True)
    return values, order[first]


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Object pixels with a 4-neighbour of another id, or on the image border."""
    edge = np.zeros(labels.shape, bool)
    vertical = labels[1:, :] != labels[:-1, :]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    del vertical
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    del horizontal
    edge[0, :] = edge[-1, :] = True
    edge[:, 0] = edge[:, -1] = True
    edge &= labels != 0
    return edge


class _Shapes:
    """Per-object geometry of a compact label image: bounding boxes, boundary pixels and their KD-trees (lazily)."""

    def __init__(self, labels: np.ndarray, n: int):
        self.labels = labels
        boxes = ndimage.find_objects(labels, max_label=n)
        # inclusive [row0, row1, col0, col1] per object (index id - 1); every id 1..n is present
        self.box = np.array([[s[0].start, s[0].stop - 1, s[1].start, s[1].stop - 1] for s in boxes], np.int64)
        self.box = self.box.reshape(n, 4)
        rows, cols = np.nonzero(_boundary(labels))
        ids = labels[rows, cols]
        order = np.argsort(ids, kind="stable")
        self.points = np.stack([rows[order], cols[order]], axis=1).astype(np.int32)
        self.start = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=n + 1)[1:])])
        self._trees: dict[int, cKDTree] = {}

    def edge(self, i: int) -> np.ndarray:
        """Boundary pixels (row, col) of object ``i``."""
        return self.points[self.start[i - 1] : self.start[i]]

    def tree(self, i: int) -> cKDTree:
        """KD-tree of the boundary pixels of object ``i``."""
        if i not in self._trees:
            self._trees[i] = cKDTree(self.edge(i))
        return self._trees[i]

    def pixels_in(self, i: int, box: np.ndarray) -> np.ndarray:
        """Pixels (row, col) of object ``i`` inside the inclusive ``box`` [row0, row1, col0, col1]."""
        r0, r1, c0, c1 = (int(v) for v in box)
        inside = np.argwhere(self.labels[r0 : r1 + 1, c0 : c1 + 1] == i)
        return inside + np.array([r0, c0])


def _directed(a: _Shapes, i: int, b: _Shapes, j: int) -> float:
    """Directed Hausdorff distance: the largest distance from a pixel of object ``i`` of ``a`` to object ``j`` of ``b``.

    The farthest pixel is on ``i``'s boundary or inside ``j``'s bounding box (outside it, one step away from the
    box moves away from every pixel of ``j``); candidates that cannot beat the farthest by the bounding-box
    bound are dropped before the KD-tree query."""
    box = b.box[j - 1]
    candidates = np.concatenate([a.edge(i), a.pixels_in(i, box)]).astype(np.float64)
    centre = np.array([(box[0] + box[1]) / 2, (box[2] + box[3]) / 2])
    radius = math.hypot((box[1] - box[0]) / 2, (box[3] - box[2]) / 2)
    reach = np.hypot(*(candidates - centre).T)  # distance to j lies within reach +- radius
    candidates = candidates[reach >= reach.max() - 2 * radius - 1e-9]
    rc = candidates.astype(np.int64)
    outside = b.labels[rc[:, 0], rc[:, 1]] != j
    if not outside.any():
        return 0.0
    distance, _ = b.tree(j).query(
        candidates[outside]
    )  # the nearest pixel of j to a pixel outside it is on its boundary
    return float(np.max(distance))


class ObjectOverlap:
    """Two instance label images, their objects and how they overlap; every object metric of the module doc.

    ``truth`` and ``pred`` are (H, W) integer arrays of the same shape, 0 = background; ids need not be
    consecutive.  The overlap counts are computed once here; each metric is a method."""

    def __init__(self, truth: np.ndarray, pred: np.ndarray):
        if np.shape(truth) != np.shape(pred):
            raise ValueError(f"truth {np.shape(truth)} and prediction {np.shape(pred)} differ in shape")
        self.truth, self.n_truth = relabel(truth)
        self.pred, self.n_pred = relabel(pred)
        self.truth_area = np.bincount(self.truth.ravel(), minlength=self.n_truth + 1).astype(np.int64)
        self.pred_area = np.bincount(self.pred.ravel(), minlength=self.n_pred + 1).astype(np.int64)
        both = (self.truth > 0) & (self.pred > 0)
        width = self.n_pred + 1
        key = self.truth[both].astype(np.int64) * width + self.pred[both]
        del both
        if (self.n_truth + 1) * width <= DENSE_PAIRS:
            counts = np.bincount(key, minlength=(self.n_truth + 1) * width)
            keys = np.flatnonzero(counts)
            inter = counts[keys]
        else:
            keys, inter = np.unique(key, return_counts=True)
        #: overlapping pairs: truth id, predicted id, pixels in common (sorted by truth id, then predicted id)
        self.t, self.p = np.divmod(keys, width)
        self.inter = inter.astype(np.int64)
        self._shapes: tuple[_Shapes, _Shapes] | None = None
        self._hausdorff: dict[tuple[int, int], float] = {}

    @property
    def empty(self) -> bool:
        """No object on either side."""
        return self.n_truth == 0 and self.n_pred == 0

    def iou(self) -> np.ndarray:
        """IoU of each overlapping pair (aligned with ``t``, ``p``, ``inter``)."""
        return self.inter / (self.truth_area[self.t] + self.pred_area[self.p] - self.inter)

    def matches(self, iou: float = 0.5) -> int:
        """Number of pairs with IoU > ``iou`` (one-to-one when ``iou`` >= 0.5)."""
        return int(np.count_nonzero(self.iou() > iou))

    def _best_pred(self) -> tuple[np.ndarray, np.ndarray]:
        """(truth ids, pair index) of the predicted object each overlapped truth object overlaps most (ties: lowest id)."""
        return _first_per_group(self.t, -self.inter, self.p)

    def _best_truth(self) -> tuple[np.ndarray, np.ndarray]:
        """(predicted ids, pair index) of the truth object each overlapped predicted object overlaps most."""
        return _first_per_group(self.p, -self.inter, self.t)

    def glas_f1(self) -> float:
        """GlaS object F1: a segmented object is a TP when the truth object it overlaps most is more than half
        covered by it; F1 = 2 TP / (truth objects + segmented objects)."""
        if self.empty:
            return 1.0
        _, pair = self._best_truth()
        tp = int(np.count_nonzero(2 * self.inter[pair] > self.truth_area[self.t[pair]]))
        return 2 * tp / (self.n_truth + self.n_pred)

    def object_dice(self) -> float:
        """GlaS object-level Dice (area-weighted Dice of each object with its most-overlapping counterpart)."""
        if self.empty:
            return 1.0
        if not self.n_truth or not self.n_pred:
            return 0.0
        dice = 2 * self.inter / (self.truth_area[self.t] + self.pred_area[self.p])
        sides = []
        for (ids, pair), area in ((self._best_pred(), self.truth_area), (self._best_truth(), self.pred_area)):
            sides.append(float(np.sum(area[ids] * dice[pair]) / area[1:].sum()))  # no overlap: Dice 0
        return 0.5 * (sides[0] + sides[1])

    def hausdorff(self, t: int, p: int) -> float:
        """Hausdorff distance (pixels) between truth object ``t`` and predicted object ``p``."""
        if (t, p) not in self._hausdorff:
            if self._shapes is None:
                self._shapes = _Shapes(self.truth, self.n_truth), _Shapes(self.pred, self.n_pred)
            truth, pred = self._shapes
            self._hausdorff[t, p] = max(_directed(truth, t, pred, p), _directed(pred, p, truth, t))
        return self._hausdorff[t, p]

    def _nearest(self, i: int, of_truth: bool) -> float:
        """Smallest Hausdorff distance from object ``i`` (a truth object if ``of_truth``) to any object of the other side.

        Candidates are tried in order of a lower bound (the largest gap between corresponding sides of the two
        bounding boxes: the extreme pixel of one lies that far from every pixel of the other) until it exceeds
        the best distance found."""
        assert self._shapes is not None
        own, other = self._shapes if of_truth else self._shapes[::-1]
        bound = np.abs(other.box - own.box[i - 1]).max(axis=1)
        best = math.inf
        for j in np.argsort(bound, kind="stable"):
            if bound[j] >= best:
                break
            best = min(best, self.hausdorff(i, j + 1) if of_truth else self.hausdorff(j + 1, i))
        return best

    def object_hausdorff(self) -> float:
        """GlaS object-level Hausdorff distance in pixels (0 with no object at all, NaN with objects on one side only)."""
        if self.empty:
            return 0.0
        if not self.n_truth or not self.n_pred:
            return math.nan
        if self._shapes is None:
            self._shapes = _Shapes(self.truth, self.n_truth), _Shapes(self.pred, self.n_pred)
        truth_ids, truth_pair = self._best_pred()
        pred_ids, pred_pair = self._best_truth()
        partner_of_truth = dict(zip(truth_ids.tolist(), self.p[truth_pair].tolist()))
        partner_of_pred = dict(zip(pred_ids.tolist(), self.t[pred_pair].tolist()))
        total = 0.0
        for t in range(1, self.n_truth + 1):
            p = partner_of_truth.get(t)
            distance = self.hausdorff(t, p) if p is not None else self._nearest(t, True)
            total += self.truth_area[t] / self.truth_area[1:].sum() * distance
        for p in range(1, self.n_pred + 1):
            t = partner_of_pred.get(p)
            distance = self.hausdorff(t, p) if t is not None else self._nearest(p, False)
            total += self.pred_area[p] / self.pred_area[1:].sum() * distance
        return float(0.5 * total)

    def aji(self) -> float:
        """Aggregated Jaccard Index (Kumar et al. 2017)."""
        if self.empty:
            return 1.0
        ids, pair = _first_per_group(self.t, -self.iou(), self.p)  # each truth object's highest-IoU prediction
        inter = int(self.inter[pair].sum())
        union = int((self.truth_area[ids] + self.pred_area[self.p[pair]] - self.inter[pair]).sum())
        union += int(self.truth_area[1:].sum() - self.truth_area[ids].sum())  # truth objects overlapping nothing
        used = np.zeros(self.n_pred + 1, bool)
        used[self.p[pair]] = True
        union += int(self.pred_area[1:][~used[1:]].sum())  # predicted objects no truth object took
        return inter / union

    def panoptic(self) -> dict[str, float]:
        """``pq``, ``dq``, ``sq`` (Kirillov et al. 2019): matches at IoU > 0.5."""
        if self.empty:
            return {"pq": 1.0, "dq": 1.0, "sq": 1.0}
        iou = self.iou()
        matched = iou[iou > 0.5]
        tp = len(matched)
        dq = tp / (tp + 0.5 * (self.n_pred - tp) + 0.5 * (self.n_truth - tp))
        sq = float(matched.mean()) if tp else 0.0
        return {"pq": dq * sq, "dq": dq, "sq": sq}

    def scores(self) -> dict[str, float]:
        """Every metric: ``glas_f1``, ``object_dice``, ``object_hausdorff`` (pixels), ``aji``, ``pq``, ``dq``, ``sq``."""
        return {
            "glas_f1": self.glas_f1(),
            "object_dice": self.object_dice(),
            "object_hausdorff": self.object_hausdorff(),
            "aji": self.aji(),
            **self.panoptic(),
        }


def glas_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """GlaS object F1 of two instance label images (see :meth:`ObjectOverlap.glas_f1`)."""
    return ObjectOverlap(truth, pred).glas_f1()


def object_dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """GlaS object-level Dice of two instance label images (see :meth:`ObjectOverlap.object_dice`)."""
    return ObjectOverlap(truth, pred).object_dice()


def object_hausdorff(truth: np.ndarray, pred: np.ndarray) -> float:
    """GlaS object-level Hausdorff distance in pixels (see :meth:`ObjectOverlap.object_hausdorff`)."""
    return ObjectOverlap(truth, pred).object_hausdorff()


def aggregated_jaccard_index(truth: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index of two instance label images (see :meth:`ObjectOverlap.aji`)."""
    return ObjectOverlap(truth, pred).aji()


def panoptic_quality(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``pq``, ``dq``, ``sq`` of two instance label images (see :meth:`ObjectOverlap.panoptic`)."""
    return ObjectOverlap(truth, pred).panoptic()


def object_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Every object metric of two instance label images (see :meth:`ObjectOverlap.scores`)."""
    return ObjectOverlap(truth, pred).scores()
