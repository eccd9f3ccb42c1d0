"""Training data: patch zarr stores as a PyTorch dataset and a LightningDataModule.

Every random draw of the training data (patch order, augmentation, any global
RNG use inside loader workers) is a pure function of ``(seed, epoch)``, so a
run resumed from an epoch's checkpoint sees exactly the batches an
uninterrupted run would, with any ``num_workers``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
import zarr
from torch.utils.data import DataLoader, Dataset, Sampler

from wsiseg.errors import PatchError
from wsiseg.imaging.stain import normalise_image
from wsiseg.nn.augment import build_augmentation, reseed, seed_states
from wsiseg.nn.encoders import IMAGENET

# ImageNet statistics (8-bit units): the default; a model's own are its hparams["normalize"] (wsiseg.nn.encoders)
MEAN = np.array(IMAGENET["mean"], np.float32) * 255
STD = np.array(IMAGENET["std"], np.float32) * 255


def mean_std(normalize: Mapping[str, Sequence[float]] | None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) in 8-bit units of ``{mean, std}`` in 0-1 units (None: ImageNet's)."""
    if not normalize:
        return MEAN, STD
    return (np.array(normalize["mean"], np.float32) * 255, np.array(normalize["std"], np.float32) * 255)


def to_tensor(image: np.ndarray, normalize: Mapping[str, Sequence[float]] | None = None) -> torch.Tensor:
    """uint8 (h, w, 3) RGB → float (3, h, w) normalised with ``normalize`` ({mean, std}, 0-1; None: ImageNet)."""
    mean, std = mean_std(normalize)
    return torch.from_numpy(((image.astype(np.float32) - mean) / std).transpose(2, 0, 1).copy())


def to_target(mask: np.ndarray, classes: int = 1) -> torch.Tensor:
    """uint8 (h, w) labels → the loss target: float (1, h, w) in {0, 1} when binary
    (any non-zero label is foreground), int64 class indices (h, w) when multi-class."""
    if classes == 1:
        return torch.from_numpy(np.ascontiguousarray(mask != 0, dtype=np.float32))[None]
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))


# stream tags: keys (seed, epoch, tag, n) of different streams never coincide
AUGMENT, ORDER, MAIN, WORKER = range(4)


def derive_seed(*key: int) -> int:
    """A 32-bit seed that is a pure function of the integers ``key``, e.g. (seed, epoch, stream tag, n)."""
    return seed_states(key, 1)[0]


def seed_globals(seed: int) -> None:
    """Seed the global torch (CPU and CUDA), numpy and python RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes) of the running torch.distributed job; (0, 1) alone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochSampler(Sampler[tuple[int, int]]):
    """Patch order for one epoch as ``(index, epoch)`` keys, a pure function of ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before each training epoch (also the
    first one after a resume).  The epoch travels with every key, so loader
    workers (persistent or not) know which epoch a sample belongs to.

    Under DDP (``world`` processes) each rank takes every ``world``-th key of the one epoch order, from
    its ``rank``: the shares are disjoint, cover the epoch (padded with its first keys to equal length, as
    torch's DistributedSampler does), and step k of all ranks together is the single-process batch k of
    ``world`` x the batch size."""

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of epoch ``epoch`` next."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.size // self.world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, ORDER, 0))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        order += order[: len(self) * self.world - self.size]  # equal shares: every rank takes as many steps
        return iter([(k, self.epoch) for k in order[self.rank :: self.world]])


class ShardSampler(Sampler[int]):
    """Every ``world``-th index from ``rank``, in order, not padded: each validation patch is scored once
    over all ranks (their counts are summed, :class:`wsiseg.nn.module.SegmentationModule`)."""

    def __init__(self, size: int, rank: int = 0, world: int = 1):
        self.size, self.rank, self.world = size, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world))


class PatchDataset(Dataset):
    """All patches of several patch stores; stores are opened lazily in each worker.

    Items are addressed by a plain index or, for training, by an
    ``(index, epoch)`` key from :class:`EpochSampler`: the augmentation of such
    an item is then seeded from ``(seed, epoch, index)``, and a loader worker
    reseeds its global RNGs from ``(seed, epoch, worker id)`` when a new epoch
    starts, so nothing depends on how many epochs, workers or samples came before.
    A ``stain`` normaliser (:mod:`wsiseg.imaging.stain`) is applied to each patch as read, before augmentation.
    With ``contours`` a binary target is (2, h, w): the foreground and the objects' contours (the store's
    ``contours``), transformed together.  ``raw``: images come as uint8 (h, w, 3) tensors, to be normalised
    (and augmented: :mod:`wsiseg.nn.device_augment`) on the device."""

    def __init__(
        self,
        stores: Sequence[str | Path],
        augment: A.Compose | None = None,
        classes: int = 1,
        seed: int = 0,
        stain: Mapping[str, Any] | None = None,
        normalize: Mapping[str, Sequence[float]] | None = None,
        contours: bool = False,
        raw: bool = False,
    ):
        self.raw = raw  # images as uint8 (h, w, 3) tensors: the device normalises (and augments) them
        self.paths = [str(p) for p in stores]
        self.augment, self.classes, self.seed, self.stain = augment, classes, seed, stain
        self.normalize, self.contours = normalize, contours
        self.index: list[tuple[int, int]] = []
        for s, path in enumerate(self.paths):
            group = zarr.open_group(path, mode="r")
            count = group["images"].shape[0]
            if contours and "contours" not in group:
                raise PatchError(
                    f"{path}: no contours for `train.contour_weight` (written by an older wsiseg, or a multi-class "
                    "store): run patches again (snakemake -R patches)"
                )
            self.index.extend((s, i) for i in range(count))
        self._groups: dict[int, zarr.Group] = {}
        self._worker_epoch: int | None = None

    def __len__(self) -> int:
        return len(self.index)

    def _group(self, s: int) -> zarr.Group:
        if s not in self._groups:
            self._groups[s] = zarr.open_group(self.paths[s], mode="r")
        return self._groups[s]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_groups"] = {}  # each worker opens its own handles
        return state

    def _enter_epoch(self, epoch: int) -> None:
        """In a loader worker, reseed the global RNGs from (seed, epoch, worker id) at an epoch's first item."""
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_epoch != epoch:
            self._worker_epoch = epoch
            seed_globals(derive_seed(self.seed, epoch, WORKER, info.id))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        k, epoch = (key, None) if isinstance(key, (int, np.integer)) else key
        s, i = self.index[k]
        group = self._group(s)
        image, mask = normalise_image(np.asarray(group["images"][i]), self.stain), np.asarray(group["masks"][i])
        if epoch is not None:
            self._enter_epoch(epoch)
            if self.augment is not None:
                reseed(self.augment, self.seed, epoch, AUGMENT, k)
        if not self.contours:
            if self.augment is not None:
                out = self.augment(image=image, mask=mask)
                image, mask = out["image"], out["mask"]
            return self._image(image), to_target(mask, self.classes)
        contour = np.asarray(group["contours"][i])
        if self.augment is not None:  # the same geometric transform for the mask and the contour
            out = self.augment(image=image, masks=[mask, contour])
            image, (mask, contour) = out["image"], out["masks"]
        target = torch.cat([to_target(mask, self.classes), to_target(contour, 1)])  # (2, h, w): foreground, contour
        return self._image(image), target

    def _image(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image)) if self.raw else to_tensor(image, self.normalize)


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    augment = getattr(info.dataset, "augment", None)
    if augment is not None:  # streams for plain-index access; (index, epoch) keys reseed per item
        reseed(augment, torch.initial_seed())


class PatchDataModule(pl.LightningDataModule):
    """Train/val loaders over patch stores split by slide."""

    def __init__(
        self,
        train: Sequence[str | Path],
        val: Sequence[str | Path],
        batch_size: int = 16,
        num_workers: int = 0,
        augment: Mapping[str, Any] | Sequence[str] | None = ("hflip", "vflip", "rot90"),
        seed: int = 0,
        classes: int = 1,
        stain: Mapping[str, Any] | None = None,
        normalize: Mapping[str, Sequence[float]] | None = None,
        contours: bool = False,
        raw: bool = False,
    ):
        super().__init__()
        self.raw = raw  # uint8 patches, unaugmented: the model augments and normalises them on its device
        self.train_stores, self.val_stores = list(train), list(val)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augment_spec, self.seed, self.classes, self.stain = augment, seed, classes, stain
        self.normalize = normalize  # the model's input mean/std (its hparams["normalize"])
        self.contours = contours  # targets carry the objects' contours (a contour-aware model)

    def setup(self, stage: str | None = None) -> None:
        augment = None if self.raw else build_augmentation(self.augment_spec, self.seed)
        common = {"classes": self.classes, "seed": self.seed, "stain": self.stain, "normalize": self.normalize}
        common["raw"] = self.raw
        self.train_set = PatchDataset(self.train_stores, augment, contours=self.contours, **common)
        self.val_set = PatchDataset(self.val_stores, contours=self.contours, **common)
        if not len(self.train_set):
            raise PatchError(f"no training patches in {self.train_stores}: loosen patches.min_coverage/max_coverage")
        if not len(self.val_set):
            raise PatchError(f"no validation patches in {self.val_stores}")

    def _loader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_seed_worker,
            generator=torch.Generator().manual_seed(self.seed),  # worker base seeds: never the global RNG
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented batches; order and augmentation are a pure function of (seed, epoch); under DDP
        this rank's share of them."""
        sampler = EpochSampler(len(self.train_set), self.seed, rank=self._rank[0], world=self._rank[1])
        if self.trainer is not None:
            # Lightning creates the first iterator (and loader workers prefetch from it) before it calls
            # set_epoch; a resumed run's first epoch is not 0, so start the sampler at the restored epoch
            sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader:
        """The validation patches in order; under DDP this rank's share."""
        rank, world = self._rank
        return self._loader(self.val_set, ShardSampler(len(self.val_set), rank, world) if world > 1 else None)

    @property
    def _rank(self) -> tuple[int, int]:
        """(rank, processes) of the run: from the trainer (DDP), else alone."""
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return rank_and_world()
