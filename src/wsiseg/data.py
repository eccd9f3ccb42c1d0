"""Training data: patch zarr stores as a PyTorch dataset and a LightningDataModule."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
import zarr
from torch.utils.data import DataLoader, Dataset

# ImageNet statistics: what smp encoders (and their pretrained weights) expect
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255

AUGMENTATIONS = {
    "hflip": lambda: A.HorizontalFlip(p=0.5),
    "vflip": lambda: A.VerticalFlip(p=0.5),
    "rot90": lambda: A.RandomRotate90(p=0.5),
    "brightness_contrast": lambda: A.RandomBrightnessContrast(p=0.3),
    "hue_saturation": lambda: A.HueSaturationValue(p=0.3),
}


def build_augmentation(names: Sequence[str], seed: int) -> A.Compose | None:
    """An albumentations pipeline from names in :data:`AUGMENTATIONS` (None if empty)."""
    unknown = sorted(set(names) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; choose from {sorted(AUGMENTATIONS)}")
    if not names:
        return None
    return A.Compose([AUGMENTATIONS[n]() for n in names], seed=seed)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (h, w, 3) RGB → normalised float (3, h, w)."""
    return torch.from_numpy(((image.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1).copy())


class PatchDataset(Dataset):
    """All patches of several patch stores; stores are opened lazily in each worker."""

    def __init__(self, stores: Sequence[str | Path], augment: A.Compose | None = None):
        self.paths = [str(p) for p in stores]
        self.augment = augment
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
        return to_tensor(image), torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]


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
        augment: Sequence[str] = ("hflip", "vflip", "rot90"),
        seed: int = 0,
    ):
        super().__init__()
        self.train_stores, self.val_stores = list(train), list(val)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augment_names, self.seed = list(augment), seed

    def setup(self, stage: str | None = None) -> None:
        self.train_set = PatchDataset(self.train_stores, build_augmentation(self.augment_names, self.seed))
        self.val_set = PatchDataset(self.val_stores)
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
