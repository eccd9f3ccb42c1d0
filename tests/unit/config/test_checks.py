"""Config checks and canonical params: order never matters, except where it means something."""

from __future__ import annotations

import torch

from wsiseg.config.checks import canonical, plan_problems, schema_problem
from wsiseg.nn.losses import build_loss


def test_canonical_sorts_keys_but_keeps_the_augmentation_pipeline_order():
    config = {
        "train": {"lr": 0.1, "augment": {"vflip": 0.5, "blur": 0.1, "hflip": 0.5}, "loss": {"dice": 1, "bce": 1}},
        "seed": 0,
    }
    result = canonical(config)
    assert list(result) == ["seed", "train"] and list(result["train"]) == ["augment", "loss", "lr"]
    assert list(result["train"]["loss"]) == ["bce", "dice"]
    assert list(result["train"]["augment"]) == ["vflip", "blur", "hflip"]  # the order transforms run in


def test_loss_order_does_not_change_the_loss():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    a = build_loss({"dice": 1.0, "bce": 0.5, "focal": 0.3})(logits, target)
    b = build_loss({"focal": 0.3, "bce": 0.5, "dice": 1.0})(logits, target)
    assert torch.equal(a, b)


def test_schema_problem_names_the_file_that_sets_the_key(tmp_path):
    base, overlay = tmp_path / "config.yaml", tmp_path / "overlay.yaml"
    base.write_text("train:\n  epochs: 3\n")
    overlay.write_text("train:\n  epoch: 5\n")
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "train": {"type": "object", "additionalProperties": False, "properties": {"epochs": {"type": "integer"}}}
        },
    }
    line = schema_problem({"train": {"epochs": 3, "epoch": 5}}, schema, [base, overlay])
    assert line == f"{overlay}: unknown key `train.epoch` (did you mean `epochs`?)"


def test_plan_problems_on_a_sound_config_is_empty():
    config = {
        "train": {"arch": "unetplusplus", "encoder": "tu-resnet10t"},
        "predict": {"tile": 256, "overlap": 64},
        "patches": {"size": 64, "downscale": 2, "min_coverage": 0.1, "max_coverage": 0.9},
    }
    assert (
        plan_problems(config, {"a": "train", "b": "val"}, lambda path: (300, 300), {"a": "a.tif", "b": "b.tif"}) == []
    )


def test_image_shape_reads_headers_only(tmp_path):
    import cv2
    import numpy as np
    import tifffile
    from support.images import png_declaring

    from wsiseg.config.checks import image_shape

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((30, 50, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((31, 51, 3), np.uint8))
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((32, 52, 3), np.uint8), photometric="rgb")
    (tmp_path / "bomb.png").write_bytes(png_declaring(100_000, 90_000))  # never decoded
    assert [image_shape(tmp_path / f"a.{e}") for e in ("png", "jpg", "tif")] == [(30, 50), (31, 51), (32, 52)]
    assert image_shape(tmp_path / "bomb.png") == (90_000, 100_000)
    assert image_shape(tmp_path / "missing.png") is None


def test_the_default_config_with_only_the_architecture_changed_passes_the_dry_run():
    """What a new user tries first: config/config.yaml's settings, another `train.arch` (its defaults fill in)."""
    from wsiseg.config.networks import ARCHS

    for arch in ARCHS:
        config = {
            "train": {"arch": arch, "encoder": "tu-vit_small_patch16_224" if arch == "DPT" else "resnet18"},
            "predict": {"tile": 512, "overlap": 128},
            "patches": {"size": 128, "downscale": 2},
        }
        assert plan_problems(config, {"a": "train", "b": "val"}) == [], arch


def test_a_network_the_dry_run_refuses_is_one_line_naming_its_keys():
    config = {
        "train": {"arch": "DPT", "encoder": "resnet18", "encoder_depth": 5},
        "predict": {"tile": 500, "overlap": 64},
        "patches": {"size": 128, "downscale": 2},
    }
    problems = plan_problems(config, {"a": "train", "b": "val"})
    assert problems == [
        "`train.arch` DPT takes timm encoders only: `train.encoder` is 'resnet18', use `tu-<timm name>` "
        "(e.g. tu-vit_small_patch16_224, tu-resnet50)",
        "`train.encoder_depth` is 5, but `train.arch` DPT builds with 4 (null: its default, 4)",
    ]
    config["train"] = {"arch": "UnetPlusPlus", "encoder": "resnet18"}
    assert plan_problems(config, {"a": "train", "b": "val"}) == [
        "`predict.tile` (500) must be a multiple of 16 for `train.arch` UnetPlusPlus with `train.encoder` "
        "'resnet18' at `train.encoder_depth` 4"
    ]
