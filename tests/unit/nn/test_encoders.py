"""Foundation-model encoders offline: a timm ViT from a Hugging Face cache (``tu-hf-hub:``) or a weights file,
its keyword arguments from config, its normalisation carried to training, the checkpoint and predict, weights
that do not fit refused in one line, and the last blocks of a frozen encoder unfrozen."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from support import foundation  # noqa: E402

from wsiseg.config.networks import encoder_problems, network_problems  # noqa: E402
from wsiseg.errors import ConfigError  # noqa: E402
from wsiseg.nn.data import PatchDataset, to_tensor  # noqa: E402
from wsiseg.nn.encoders import IMAGENET, encoder_blocks, encoder_module, resolve_encoder  # noqa: E402
from wsiseg.nn.module import SegmentationModule, load_model  # noqa: E402

HUB = f"tu-hf-hub:{foundation.REPO}"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding the tiny ViT (as HF_HUB_OFFLINE=1 with HF_HOME set would)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    snapshot, state = foundation.write_hub_cache(cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return snapshot, state


def _dpt(encoder: str, **kwargs) -> SegmentationModule:
    return SegmentationModule(arch="DPT", encoder=encoder, patch_size=64, encoder_kwargs=foundation.KWARGS, **kwargs)


def _from_file(path) -> SegmentationModule:
    """DPT over the tiny ViT's plain timm architecture, its weights from the file ``path``."""
    return SegmentationModule(
        arch="DPT",
        encoder=f"tu-{foundation.ARCHITECTURE}",
        encoder_weights=str(path),
        patch_size=64,
        encoder_kwargs={**foundation.MODEL_ARGS, **foundation.KWARGS},
    )


def _same(module: torch.nn.Module, state: dict) -> bool:
    own = module.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items())


def test_hub_encoder_loads_from_the_offline_cache_with_its_config_weights_and_normalisation(hub_cache, tmp_path):
    snapshot, state = hub_cache
    spec = resolve_encoder(HUB, "pretrained", foundation.KWARGS)
    assert spec.name == f"tu-{foundation.ARCHITECTURE}"  # the timm architecture of the hub config.json
    assert spec.kwargs == {**foundation.MODEL_ARGS, **foundation.KWARGS}  # its model_args, then config's kwargs
    assert spec.weights_file == snapshot / "model.safetensors"
    assert spec.source["revision"] == foundation.COMMIT and spec.source["repo"] == foundation.REPO
    assert spec.normalize == {"mean": foundation.MEAN, "std": foundation.STD}

    model = _dpt(HUB, encoder_weights="pretrained")
    vit = encoder_module(model.net)
    assert _same(vit, state)  # every tensor of the file, in the encoder
    assert type(vit.blocks[0].mlp).__name__ == "GluMlp" and vit.num_reg_tokens == 2  # config's kwargs
    assert model.hparams.normalize == spec.normalize and model.hparams.encoder_source["revision"] == foundation.COMMIT

    # one training step, then the checkpoint rebuilds without the hub (an empty cache) and predicts the same
    trainer_free_step(model)
    path = tmp_path / "model.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    from huggingface_hub import constants

    constants.HF_HUB_CACHE = str(tmp_path / "empty")  # restored by the fixture's monkeypatch
    loaded = load_model(path)
    x = torch.randn(1, 3, 96, 32)  # any multiple of 32 (DPT's 1/32 scale and the patches), not only the 64 trained
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    assert loaded.hparams.normalize == {"mean": foundation.MEAN, "std": foundation.STD}


def trainer_free_step(model: SegmentationModule) -> None:
    optimizer = model.configure_optimizers()["optimizer"]
    x, y = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    model.train()
    model.loss(model(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize("name,wrap", [("uni.safetensors", None), ("uni.bin", None), ("teacher.pth", "state_dict")])
def test_weights_file_loads_into_the_encoder(tmp_path, name, wrap):
    path = tmp_path / name
    state = foundation.write_weights_file(path, seed=3, wrap=wrap)
    model = _from_file(path)
    assert _same(encoder_module(model.net), state)
    source = model.hparams.encoder_source
    from wsiseg.modelcard import file_sha256

    assert source["weights"] == "file" and source["sha256"] == file_sha256(path)


def test_weights_that_do_not_fit_stop_in_one_line_naming_the_file_and_keys(tmp_path):
    path = tmp_path / "other.safetensors"
    foundation.write_weights_file(path, embed_dim=48, num_heads=2)  # another width: every shape differs
    with pytest.raises(ConfigError) as err:
        _from_file(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "wrong shape" in message and "[48] vs [32]" in message

    missing = tmp_path / "short.safetensors"
    foundation.write_weights_file(missing, depth=3)  # a block less: the fourth block's keys are missing
    with pytest.raises(ConfigError, match=r"missing \d+: blocks\.3\."):
        _from_file(missing)


def test_hub_problems_are_one_line_each(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"not in the Hugging Face cache .*HF_HUB_OFFLINE is set.*hf download"):
        resolve_encoder("tu-hf-hub:MahmoodLab/UNI2-h", "pretrained")

    from types import SimpleNamespace

    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        url = "https://huggingface.co/MahmoodLab/UNI2-h/resolve/main/config.json"
        response = SimpleNamespace(headers={}, status_code=401, request=SimpleNamespace(url=url))  # as httpx's
        raise GatedRepoError("401 Client Error: access to model MahmoodLab/UNI2-h is restricted", response=response)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(
        ConfigError, match=r"gated model: accept its licence at https://huggingface.co/MahmoodLab/UNI2-h.*HF_TOKEN"
    ):
        resolve_encoder("tu-hf-hub:MahmoodLab/UNI2-h", "pretrained")


def test_normalisation_follows_the_weights_or_the_config():
    assert resolve_encoder("resnet18").normalize == IMAGENET  # random weights: ImageNet's, as before
    assert resolve_encoder("tu-vit_small_patch16_224.augreg_in21k", "pretrained").normalize == {
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }  # timm's pretrained config for those weights (not downloaded here)
    own = {"mean": [0.7, 0.6, 0.7], "std": [0.2, 0.2, 0.2]}
    assert resolve_encoder("resnet18", normalize=own).normalize == own
    with pytest.raises(ConfigError, match="train.normalize"):
        resolve_encoder("resnet18", normalize={"mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4]})


def test_patches_and_tiles_are_normalised_with_the_models_mean_and_std(tmp_path):
    import zarr
    from support.patches import write_store

    from wsiseg.predict import TileNormaliser

    norm = {"mean": foundation.MEAN, "std": foundation.STD}
    store = write_store(tmp_path / "p.zarr", 2)
    images = np.asarray(zarr.open_group(store, mode="r")["images"][:])
    x, _ = PatchDataset([store], normalize=norm)[0]
    expected = (images[0].astype(np.float32) / 255 - np.array(norm["mean"])) / np.array(norm["std"])
    assert np.allclose(x.numpy().transpose(1, 2, 0), expected, atol=1e-4)
    tiles = TileNormaliser(torch.device("cpu"), norm)
    assert torch.allclose(tiles(tiles.prepare(images)), torch.stack([to_tensor(i, norm) for i in images]), atol=1e-4)


@pytest.mark.parametrize(
    "encoder,kwargs,arch", [(f"tu-{foundation.ARCHITECTURE}", True, "DPT"), ("resnet18", False, "Unet")]
)
def test_unfreeze_blocks_lets_the_last_blocks_learn(encoder, kwargs, arch):
    extra = (
        {"encoder_kwargs": {**foundation.MODEL_ARGS, **foundation.KWARGS}}
        if kwargs
        else {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
    )
    model = SegmentationModule(
        arch=arch, encoder=encoder, patch_size=64, freeze_encoder=True, unfreeze_blocks=1, **extra
    )
    blocks = encoder_blocks(model.net.encoder, 64)
    last = blocks[-1]
    assert last.endswith(("blocks.3", "layer2"))  # the ViT's fourth block; resnet18 at depth 3 runs to layer2
    learning = {n for n, p in model.net.encoder.named_parameters() if p.requires_grad}
    assert learning and all(n.startswith(last) or not any(n.startswith(b + ".") for b in blocks) for n in learning)
    assert not any(n.startswith(blocks[0] + ".") for n in learning)
    before = {k: v.clone() for k, v in model.net.encoder.state_dict().items()}
    trainer_free_step(model)
    after = model.net.encoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(last) or k in {n for n in learning} for k in changed)
    assert model.net.encoder.get_submodule(last).training and not model.net.encoder.get_submodule(blocks[0]).training


def test_dry_run_refuses_bad_encoder_settings(tmp_path):
    assert encoder_problems({"encoder_weights": "imagenet"}) == []
    assert "no such weights file" in encoder_problems({"encoder_weights": str(tmp_path / "nope.safetensors")})[0]
    assert "freeze_encoder" in encoder_problems({"unfreeze_blocks": 2})[0]
    assert "timm keyword arguments" in encoder_problems({"encoder": "resnet18", "encoder_kwargs": {"depth": 2}})[0]
    assert "ORG/NAME" in encoder_problems({"encoder": "tu-hf-hub:UNI2-h"})[0]
    # a hub ViT's patch size (from its kwargs here: not cached) sets the sizes DPT takes: lcm(32, 14)
    train = {"arch": "DPT", "encoder": "tu-hf-hub:MahmoodLab/UNI2-h", "encoder_kwargs": {"patch_size": 14}}
    assert network_problems(train, {"patches.size": 224, "predict.tile": 448}) == []
    assert "multiple of 224" in network_problems(train, {"patches.size": 256})[0]
    # a hub ViT is not a U-Net encoder
    assert "plain ViT" in network_problems({**train, "arch": "Unet"}, {})[0]


def test_a_patch_14_vit_trains_and_predicts_at_its_own_resolution():
    """UNI2-h, Virchow2 and H-optimus use 14-pixel patches, which smp's DPT decoder cannot fuse (its pyramid
    needs power-of-two strides): the ViT sees the tile as it is, and its features are resampled to 1/16."""
    kwargs = {**foundation.MODEL_ARGS, **foundation.KWARGS, "patch_size": 14}
    model = SegmentationModule(
        arch="DPT", encoder=f"tu-{foundation.ARCHITECTURE}", patch_size=224, encoder_kwargs=kwargs
    )
    model.eval()
    with torch.no_grad():
        for side in (224, 448):
            assert model(torch.zeros(1, 3, side, side)).shape == (1, 1, side, side)
    assert encoder_module(model.net).patch_embed.patch_size == (14, 14)  # not resized to 16: its own scale
    with pytest.raises(ConfigError, match="multiple of 224"):
        SegmentationModule(arch="DPT", encoder=f"tu-{foundation.ARCHITECTURE}", patch_size=256, encoder_kwargs=kwargs)


def test_hub_config_without_model_args_builds_for_its_pretraining_size(hub_cache):
    """H-optimus-0's config.json has no model_args and timm's entrypoint defaults to 518 px: the position
    embedding the weights hold is for the pretrained_cfg input size (224), which the build must use."""
    import json

    snapshot, state = hub_cache
    config = json.loads((snapshot / "config.json").read_text())
    config["model_args"] = {k: v for k, v in config["model_args"].items() if k != "img_size"}
    (snapshot / "config.json").write_text(json.dumps(config))
    spec = resolve_encoder(HUB, "pretrained", foundation.KWARGS)
    assert spec.kwargs["img_size"] == 64  # pretrained_cfg input_size [3, 64, 64]
    assert _same(encoder_module(_dpt(HUB, encoder_weights="pretrained").net), state)  # pos_embed fits
