"""Every architecture the config accepts builds, trains one step and predicts a tile at input resolution;
the combinations the dry run refuses are ones smp really cannot build or train (wsiseg.config.networks.NETWORKS)."""

from __future__ import annotations

import inspect

import pytest

torch = pytest.importorskip("torch")
smp = pytest.importorskip("segmentation_models_pytorch")

from wsiseg.config.checks import plan_problems  # noqa: E402
from wsiseg.config.networks import (  # noqa: E402
    ARCHS,
    NETWORKS,
    input_multiple,
    network_problems,
    network_settings,
    resolve_network,
)
from wsiseg.errors import ConfigError  # noqa: E402
from wsiseg.nn.architectures import build_network  # noqa: E402
from wsiseg.nn.module import SegmentationModule, upgrade_hparams  # noqa: E402

VIT = "tu-vit_tiny_patch16_224"
# a CNN encoder of smp's own under every architecture that takes one, a timm CNN under all, a timm ViT under DPT
CASES = [(arch, "resnet18") for arch in ARCHS if arch != "DPT"]
CASES += [(arch, "tu-resnet10t") for arch in ARCHS] + [("DPT", VIT)]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _side(arch: str, encoder: str, at_least: int) -> int:
    """The smallest input side >= ``at_least`` that the checks accept for the architecture's default depth."""
    multiple, minimum = input_multiple(arch, encoder)
    side = max(at_least, minimum)
    return -(-side // multiple) * multiple


@pytest.mark.parametrize("arch,encoder", CASES, ids=[f"{a}-{e}" for a, e in CASES])
def test_every_architecture_trains_a_step_and_predicts_at_input_resolution(arch, encoder):
    if encoder.startswith("tu-"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    train = {"arch": arch, "encoder": encoder, "encoder_depth": None, "decoder_channels": None}
    patch = _side(arch, encoder, 64)
    tile = _side(arch, encoder, patch + 1)  # another size than training's, as predict.tile is
    assert network_problems(train, {"patches.size": patch, "predict.tile": tile}) == []
    module = SegmentationModule(arch=arch, encoder=encoder, lr=1e-3, patch_size=patch)
    optimiser = torch.optim.AdamW(module.parameters(), lr=1e-3)
    x, y = torch.rand(2, 3, patch, patch), (torch.rand(2, 1, patch, patch) > 0.5).float()
    module.train()
    logits = module(x)
    assert logits.shape == (2, 1, patch, patch)
    loss = module.loss(logits, y)
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)
    module.eval()
    with torch.no_grad():
        assert module(torch.rand(1, 3, tile, tile)).shape == (1, 1, tile, tile)
    # the checkpoint records what was built, so it rebuilds the same network whatever the defaults become
    depth, channels = module.hparams["encoder_depth"], module.hparams["decoder_channels"]
    assert depth == NETWORKS[arch].depth and (channels is None) == (NETWORKS[arch].takes_channels is None)
    rebuilt = build_network(arch, encoder, None, depth, channels)
    rebuilt.load_state_dict(module.net.state_dict())


def test_unets_keep_the_demos_network():
    assert resolve_network("Unet") == (4, [128, 64, 32, 16])
    assert resolve_network("unet", 5) == (5, [256, 128, 64, 32, 16])  # smp's own, for older checkpoints
    assert resolve_network("UnetPlusPlus", 3) == (3, [64, 32, 16])
    assert resolve_network("DeepLabV3") == (5, [256]) and resolve_network("PAN", 4, [64]) == (4, [64])
    assert resolve_network("FPN") == (5, None)


def test_old_checkpoints_rebuild_with_smps_defaults():
    assert upgrade_hparams({"arch": "PSPNet"})["encoder_depth"] == 3
    assert upgrade_hparams({"arch": "DPT"})["encoder_depth"] == 4
    old = upgrade_hparams({"arch": "Segformer", "encoder_depth": 4, "decoder_channels": [128, 64, 32, 16]})
    assert (old["encoder_depth"], old["decoder_channels"]) == (4, None)  # Segformer never used them


def test_the_table_matches_smps_own_signatures():
    """Defaults said to be smp's are smp's; the decoder_channels form is what smp takes."""
    assert sorted(NETWORKS) == sorted(ARCHS)
    ours = {"Unet", "UnetPlusPlus", "MAnet", "Linknet"}  # wsiseg's U-Net depth (4), the demo's
    for cls in smp.MODEL_ARCHITECTURES_MAPPING.values():
        network, parameters = NETWORKS[cls.__name__], inspect.signature(cls.__init__).parameters
        if cls.__name__ not in ours:
            assert network.depth == parameters["encoder_depth"].default, cls.__name__
        channels = parameters.get("decoder_channels")
        form = None if channels is None else "int" if isinstance(channels.default, int) else "list"
        assert network.takes_channels == form, cls.__name__
        if form == "int":
            assert network.channels == channels.default, cls.__name__
        if "upsampling" in parameters and cls.__name__ not in ("FPN", "PSPNet"):
            assert "upsampling" not in network_settings(cls.__name__)  # smp's own default brings full resolution


# (train settings, input sides, what the one line names, a build/forward smp refuses without the check)
REFUSED = [
    ({"arch": "DPT", "encoder": "resnet18"}, {}, ["`train.arch` DPT", "`train.encoder`"]),
    ({"arch": "Unet", "encoder": VIT}, {}, ["`train.encoder`", "DPT", "Unet"]),
    ({"arch": "DeepLabV3", "encoder": "vgg11"}, {}, ["`train.encoder` 'vgg11'", "dilated", "DeepLabV3"]),
    ({"arch": "PAN", "encoder": "densenet121"}, {}, ["`train.encoder` 'densenet121'", "PAN"]),
    ({"arch": "UnetPlusPlus", "encoder": "mit_b0"}, {}, ["`train.encoder` 'mit_b0'", "UnetPlusPlus"]),
    ({"arch": "Linknet", "encoder": "mit_b0"}, {}, ["`train.encoder` 'mit_b0'", "Linknet"]),
    ({"arch": "FPN", "encoder": "mit_b0", "encoder_depth": 4}, {}, ["`train.encoder_depth` is 4", "FPN", "5"]),
    ({"arch": "DPT", "encoder": VIT, "encoder_depth": 3}, {}, ["`train.encoder_depth` is 3", "DPT", "4"]),
    ({"arch": "Unet", "encoder_depth": 3, "decoder_channels": [128, 64, 32, 16]}, {}, ["`train.decoder_channels`"]),
    ({"arch": "DeepLabV3", "decoder_channels": [128, 64, 32, 16]}, {}, ["`train.decoder_channels`", "[256]"]),
    ({"arch": "FPN", "decoder_channels": [128, 64, 32, 16]}, {}, ["`train.decoder_channels`", "null"]),
    ({"arch": "UnetPlusPlus"}, {"patches.size": 100}, ["`patches.size` (100)", "multiple of 16"]),
    ({"arch": "PAN"}, {"predict.tile": 96}, ["`predict.tile` (96)", "at least 128"]),
    ({"arch": "DPT", "encoder": VIT}, {"patches.size": 48}, ["`patches.size` (48)", "multiple of 32"]),
]


@pytest.mark.parametrize("train,sides,named", REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_refused_combinations_are_one_line_naming_the_keys(train, sides, named):
    train = {"encoder": "resnet18", "encoder_depth": None, "decoder_channels": None, **train}
    problems = network_problems(train, sides)
    assert len(problems) == 1 and "\n" not in problems[0], problems
    for words in named:
        assert words in problems[0], (words, problems[0])
    config = {
        "train": train,
        "predict": {"tile": sides.get("predict.tile", 512), "overlap": 0},
        "patches": {"size": sides.get("patches.size", 256), "downscale": 1},
    }
    assert problems[0] in plan_problems(config, {})
    if not sides:  # the network itself is refused: building it says the same line
        with pytest.raises(ConfigError) as raised:
            build_network(train["arch"], train["encoder"], None, train["encoder_depth"], train["decoder_channels"])
        assert str(raised.value) == problems[0]


@pytest.mark.parametrize("train,sides,named", REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_what_the_checks_refuse_smp_refuses_too(train, sides, named):
    """No guessed rule: without wsiseg's check, smp fails to build the network or to run it at that size."""
    train = {"encoder": "resnet18", "encoder_depth": None, "decoder_channels": None, **train}
    if train["encoder"].startswith("tu-"):
        pytest.importorskip("timm")
    kwargs = network_settings(train["arch"], train["encoder_depth"], train["decoder_channels"])
    if train["arch"] == "DPT" and train["encoder"] == VIT:
        kwargs["dynamic_img_size"] = True
    if train["decoder_channels"] is not None:
        kwargs["decoder_channels"] = train["decoder_channels"]  # as the user wrote it
    if network_settings(train["arch"]).get("decoder_channels", "none") == "none" and train["decoder_channels"]:
        # smp passes a key its architecture does not take on to the encoder, which ignores it: refused as a no-op
        plain = smp.create_model(train["arch"], encoder_name=train["encoder"], encoder_weights=None)
        ignored = smp.create_model(train["arch"], encoder_name=train["encoder"], encoder_weights=None, **kwargs)
        assert [t.shape for t in plain.state_dict().values()] == [t.shape for t in ignored.state_dict().values()]
        return
    with pytest.raises(Exception):
        net = smp.create_model(train["arch"], encoder_name=train["encoder"], encoder_weights=None, **kwargs).eval()
        side = next(iter(sides.values()), 64)
        with torch.no_grad():
            y = net(torch.rand(1, 3, side, side))
        assert y.shape[-2:] == (side, side)


def test_fpn_refuses_a_transformer_style_timm_encoder_below_depth_5():
    pytest.importorskip("timm")
    with pytest.raises(ConfigError, match=r"`train.encoder_depth` is 4, but `train.arch` FPN with `train.encoder`"):
        build_network("FPN", "tu-convnext_atto", None, 4)
    assert build_network("FPN", "tu-convnext_atto", None, None).encoder  # its default depth, 5, builds


def test_the_module_refuses_patches_the_network_cannot_take():
    with pytest.raises(
        ConfigError, match=r"^`patches.size` \(64\) must be a multiple of 16 and at least 128 for `train.arch` PAN"
    ):
        SegmentationModule(arch="PAN", patch_size=64)
