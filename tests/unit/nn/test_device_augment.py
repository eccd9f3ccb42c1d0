"""Augmentation on the training device (`train.augment_on: device`): the loader path's transforms and
distributions on whole batches, images and targets moved together, every draw seeded."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from support.patches import TINY, write_store  # noqa: E402

from wsiseg.errors import ConfigError  # noqa: E402
from wsiseg.imaging.stain import HEDJitter  # noqa: E402
from wsiseg.imaging.stain import hed_jitter as cpu_hed_jitter  # noqa: E402
from wsiseg.nn.augment import build_augmentation, reseed  # noqa: E402
from wsiseg.nn.device_augment import DeviceAugment, device_problems, hed_jitter  # noqa: E402


def _tissue(n: int, seed: int = 0) -> np.ndarray:
    """``n`` small H&E-coloured uint8 patches (n, 8, 8, 3)."""
    rng = np.random.default_rng(seed)
    base = np.array([[190, 110, 170], [120, 60, 150], [235, 215, 230]], np.float64)
    pick = rng.integers(0, 3, (n, 8, 8))
    return np.clip(base[pick] + rng.normal(0, 8, (n, 8, 8, 3)), 0, 255).astype(np.uint8)


def test_hed_jitter_on_the_device_is_the_loaders_up_to_rounding():
    images = _tissue(6)
    rng = np.random.default_rng(1)
    scale, shift = rng.uniform(0.8, 1.2, (6, 3)), rng.uniform(-0.02, 0.02, (6, 3))
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    out = hed_jitter(batch, torch.tensor(scale, dtype=torch.float32), torch.tensor(shift, dtype=torch.float32))
    for i in range(6):
        expected = cpu_hed_jitter(images[i], scale[i], shift[i]).astype(np.float64)
        assert np.abs(out[i].permute(1, 2, 0).numpy() - expected).max() <= 1.0  # the loader rounds to uint8


def test_geometry_moves_images_and_targets_together_with_the_configured_probabilities():
    n = 4000
    rng = np.random.default_rng(2)
    masks = (rng.random((n, 6, 6)) > 0.5).astype(np.float32)
    images = torch.from_numpy(np.repeat(masks[:, None] * 255, 3, axis=1))  # the image draws its own mask
    targets = torch.from_numpy(masks[:, None].copy())
    augment = DeviceAugment({"hflip": 0.5, "vflip": 0.25, "rot90": 0.5, "transpose": 0.1}, seed=3)
    out, moved = augment(images.clone(), targets.clone(), (0, 0, 0))
    assert torch.equal(out[:, 0] / 255, moved[:, 0])  # every transform applied to both alike
    flipped = (moved[:, 0] == targets[:, 0].flip(-1)).flatten(1).all(1) & ~(moved == targets).flatten(1).all(1)
    assert 0.05 < flipped.float().mean() < 0.3  # some samples are exactly hflipped (others combine transforms)
    unchanged = (moved == targets).flatten(1).all(1).float().mean().item()
    # untouched: no hflip, no vflip, rot90 not fired or 0 turns, no transpose = 0.5 * 0.75 * (0.5 + 0.5 / 4) * 0.9
    assert abs(unchanged - 0.5 * 0.75 * 0.625 * 0.9) < 4 * np.sqrt(0.21 * 0.79 / n)
    again, _ = augment(images.clone(), targets.clone(), (0, 0, 0))
    other, _ = augment(images.clone(), targets.clone(), (0, 0, 1))
    assert torch.equal(again, out) and not torch.equal(other, out)  # a pure function of (seed, epoch, rank, batch)


def test_hed_jitter_draws_match_the_loaders_distribution():
    n = 3000
    images = _tissue(n, seed=4)
    loader = build_augmentation({"hed": {"p": 0.8, "alpha": 0.2, "beta": 0.02}}, seed=5)
    cpu = []
    for k in range(n):
        reseed(loader, 5, 0, k)
        cpu.append(loader(image=images[k])["image"].astype(np.float64).mean(axis=(0, 1)))
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    device, _ = DeviceAugment({"hed": {"p": 0.8, "alpha": 0.2, "beta": 0.02}}, seed=5)(
        batch, torch.zeros(n, 1, 8, 8), (0, 0, 0)
    )
    dev = device.mean(dim=(2, 3)).numpy()
    cpu = np.array(cpu)
    # mean and spread of each channel's mean colour agree within a few standard errors
    se = cpu.std(axis=0) / np.sqrt(n) * np.sqrt(2)
    assert (np.abs(dev.mean(axis=0) - cpu.mean(axis=0)) < 4 * se + 0.5).all()
    assert (np.abs(dev.std(axis=0) / cpu.std(axis=0) - 1) < 0.1).all()
    assert isinstance(loader.transforms[0], HEDJitter)


def test_transforms_without_a_device_version_need_the_loader():
    assert device_problems({"hflip": 0.5, "affine": 0.3, "blur": 0.1, "hsv": 0.2}) == ["affine", "hsv"]
    with pytest.raises(ConfigError, match="affine.*need the loader"):
        DeviceAugment({"hflip": 0.5, "affine": 0.3})


def test_training_with_augmentation_on_the_device(tmp_path, caplog):
    from wsiseg.train import TrainParams, train_model

    train, val = write_store(tmp_path / "t.zarr", 16, seed=0), write_store(tmp_path / "v.zarr", 8, seed=1)
    params = TrainParams(**{**TINY, "augment_on": "device", "augment": {"hflip": 0.5, "rot90": 0.5, "hed": 0.8}})
    with caplog.at_level("INFO", logger="wsiseg.train"):
        metrics = train_model([train], [val], tmp_path / "m", params, threads=2)
    assert "augmentation on the device" in caplog.text
    assert metrics["val_dice"].between(0, 1).all() and (tmp_path / "m" / "model.ckpt").exists()


def test_brightness_contrast_and_blur_on_the_device_are_albumentations_up_to_rounding():
    import albumentations as A
    from albumentations.augmentations.blur import functional as fblur

    from wsiseg.nn.device_augment import _blur, _brightness_contrast

    images = _tissue(3, seed=6)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    alpha, beta = torch.tensor([0.85, 1.0, 1.2]), torch.tensor([-30.0, 10.0, 45.0])
    bright = _brightness_contrast(batch.clone(), alpha, beta)
    sigma, ksize = torch.tensor([0.7, 1.5, 2.8]), torch.tensor([3, 5, 5])
    blurred = _blur(batch.clone(), sigma, ksize)
    for i in range(3):
        expected = A.RandomBrightnessContrast(p=1).apply(images[i], alpha=float(alpha[i]), beta=float(beta[i]))
        assert np.abs(bright[i].permute(1, 2, 0).numpy() - expected).max() <= 1.0
        kernel = fblur.create_gaussian_kernel_1d(float(sigma[i]), int(ksize[i]))
        expected = A.GaussianBlur(p=1).apply(images[i], kernel=kernel)
        assert np.abs(blurred[i].permute(1, 2, 0).numpy() - expected).max() <= 1.0
