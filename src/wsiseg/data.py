"""Training data: patch zarr stores as a PyTorch dataset and a LightningDataModule."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
import zarr
from torch.utils.data import DataLoader, Dataset

from .augment import build_augmentation

# ImageNet statistics: what smp encoders (and their pretrained weights) expect
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (h, w, 3) RGB → normalised float (3, h, w)."""
    return torch.from_numpy(((image.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1).copy())


def to_target(mask: np.ndarray, classes: int = 1) -> torch.Tensor:
    """uint8 (h, w) labels → the loss target: float (1, h, w) in {0, 1} when binary
    (any non-zero label is foreground), int64 class indices (h, w) when multi-class."""
    if classes == 1:
        return torch.from_numpy(np.ascontiguousarray(mask != 0, dtype=np.float32))[None]
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))


class PatchDataset(Dataset):
    """All patches of several patch stores; stores are opened lazily in each worker."""

    def __init__(self, stores: Sequence[str | Path], augment: A.Compose | None = None, classes: int = 1):
        self.paths = [str(p) for p in stores]
        self.augment, self.classes = augment, classes
        self.index: list[tuple[int, int]] = []
        for s, path in enumerate(self.paths):
            count = zarr.open_group(path, mode="r")["images"].shape[0]
            self.index.extend((s, i) for i in range(count))
        self._groups: dict[int, zarr.Group] = {}

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

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, i = self.index[k]
        group = self._group(s)
        image, mask = np.asarray(group["images"][i]), np.asarray(group["masks"][i])
        if self.augment is not None:
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return to_tensor(image), to_target(mask, self.classes)


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    augment = getattr(info.dataset, "augment", None)
    if augment is not None:
        augment.set_random_seed(int(torch.initial_seed() % 2**31))


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
    ):
        super().__init__()
        self.train_stores, self.val_stores = list(train), list(val)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augment_spec, self.seed, self.classes = augment, seed, classes

    def setup(self, stage: str | None = None) -> None:
        self.train_set = PatchDataset(self.train_stores, build_augmentation(self.augment_spec, self.seed), self.classes)
        self.val_set = PatchDataset(self.val_stores, classes=self.classes)
        if not len(self.train_set):
            raise ValueError(f"no training patches in {self.train_stores}: loosen patches.min_coverage/max_coverage")
        if not len(self.val_set):
            raise ValueError(f"no validation patches in {self.val_stores}")

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_seed_worker,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
