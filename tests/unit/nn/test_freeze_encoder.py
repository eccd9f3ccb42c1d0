"""`train.freeze_encoder`: only the decoder and head learn; the encoder keeps its weights and statistics."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from wsiseg.nn.module import SegmentationModule  # noqa: E402


def _step(model: SegmentationModule) -> None:
    optimizer = model.configure_optimizers()["optimizer"]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    y = (torch.rand(2, 1, 64, 64, generator=generator) > 0.5).float()
    model.train()
    loss = model.loss(model(x), y)
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("freeze", [True, False])
def test_a_frozen_encoder_keeps_its_weights_and_batch_norm_statistics(freeze):
    torch.manual_seed(0)
    model = SegmentationModule(encoder_depth=3, decoder_channels=[32, 16, 8], patch_size=64, freeze_encoder=freeze)
    encoder = {k: v.clone() for k, v in model.net.encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in model.net.decoder.state_dict().items()}
    _step(model)
    encoder_same = all(torch.equal(encoder[k], v) for k, v in model.net.encoder.state_dict().items())
    decoder_same = all(torch.equal(decoder[k], v) for k, v in model.net.decoder.state_dict().items())
    assert encoder_same == freeze  # weights and running statistics untouched only when frozen
    assert not decoder_same
    assert model.net.encoder.training is not freeze and model.net.decoder.training
    optimised = sum(
        p.numel() for group in model.configure_optimizers()["optimizer"].param_groups for p in group["params"]
    )
    encoder_size = sum(p.numel() for p in model.net.encoder.parameters())
    assert optimised == sum(p.numel() for p in model.parameters()) - (encoder_size if freeze else 0)
    assert model.hparams.freeze_encoder is freeze  # recorded in the checkpoint
