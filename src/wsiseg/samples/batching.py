"""Slides per job (config ``slides_per_job``): the workflow's slide groups and where each slide's store lies.

With one slide per job, every slide is its own job and its store is ``{results}/{stage}/{slide}.zarr``.  With more,
the slides of a stage go in groups of that many, in sample-sheet order, named ``b0000``, ``b0001``, ...; a group's
job writes the folder ``{results}/{stage}/batches/{group}/`` that holds its slides' stores
(:func:`wsiseg.store.layout.find_store` finds a store either way).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from wsiseg.store.layout import SLIDE_GROUPS


def batch_slides(ids: Sequence[str], per_job: int) -> dict[str, list[str]]:
    """Groups of ``per_job`` slides of ``ids``, in their order, named ``b0000``, ``b0001``, ..."""
    if per_job < 1:
        raise ValueError(f"slides per job must be at least 1, got {per_job}")
    return {f"b{k // per_job:04d}": list(ids[k : k + per_job]) for k in range(0, len(ids), per_job)}


class SlideBatches:
    """The slide groups of each stage folder (``zarr``, ``patches``, ``predictions``) and their paths.

    ``stages`` maps a stage folder to the slides it holds, in sample-sheet order."""

    def __init__(self, results: str, per_job: int, stages: Mapping[str, Sequence[str]]):
        self.results, self.per_job = str(results), int(per_job)
        self.groups = {stage: batch_slides(ids, self.per_job) for stage, ids in stages.items()}
        self.group_of = {
            stage: {slide: group for group, ids in groups.items() for slide in ids}
            for stage, groups in self.groups.items()
        }

    def folder(self, stage: str, slide: str) -> str:
        """The folder of the slide group that holds ``slide``'s store in ``{results}/{stage}/``."""
        return f"{self.results}/{stage}/{SLIDE_GROUPS}/{self.group_of[stage][slide]}"

    def store(self, stage: str, slide: str) -> str:
        """The store of ``slide`` in ``{results}/{stage}/``: its own job's output, or inside its group's folder."""
        if self.per_job == 1:
            return f"{self.results}/{stage}/{slide}.zarr"
        return f"{self.folder(stage, slide)}/{slide}.zarr"

    def job_outputs(self, stage: str, ids: Sequence[str]) -> list[str]:
        """The outputs of the jobs that write the stores of ``ids``: the stores, or their groups' folders."""
        if self.per_job == 1:
            return [self.store(stage, slide) for slide in ids]
        return sorted({self.folder(stage, slide) for slide in ids})
