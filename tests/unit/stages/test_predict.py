"""Tiled inference: seamless blending, TTA, ensembles, post-processing."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr

from wsiseg.imaging.postprocess import clean_mask, postprocess_mask
from wsiseg.nn.data import to_tensor
from wsiseg.nn.module import SegmentationModule, load_model
from wsiseg.predict import PredictParams, blend_window, predict_batch, predict_slide
from wsiseg.store.prediction import Prediction
from wsiseg.store.slide import SlideStore


def _whole_image_probability(slide, checkpoint) -> np.ndarray:
    """Reference: one forward pass over the whole (downscaled, padded) slide."""
    model = load_model(checkpoint)
    store = SlideStore(slide)
    h, w = store.dims(2)
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    image = store.read_image(0, 0, (ph, pw), 2)
    with torch.inference_mode():
        return torch.sigmoid(model(to_tensor(image)[None]))[0, 0, :h, :w].numpy()


def test_tiled_prediction_matches_whole_image_forward(tiny_trained, tmp_path):
    slides, ckpt = tiny_trained
    params = PredictParams(tile=128, overlap=64, min_tissue=0, chunk=128)
    out = predict_slide(slides["demo_2"], ckpt, tmp_path / "p.zarr", params)
    root = zarr.open_group(out, mode="r")
    assert root.attrs["prob_downscale"] == 2  # probabilities stored on the model's grid (downscale 2)
    tiled = root["0"][0] / 255.0
    whole = _whole_image_probability(slides["demo_2"], ckpt)
    diff = np.abs(tiled[: whole.shape[0], : whole.shape[1]] - whole)
    # measured with the 2-epoch tiny model: mean 0.015, 99th percentile 0.066 (a single padded
    # 256 px tile instead: 0.046 and 0.54); the differences are tile-border context and padding
    assert diff.mean() < 0.02 and np.percentile(diff, 99) < 0.08, (diff.mean(), diff.max())


def test_no_seams_between_tiles(tiny_trained, tmp_path):
    slides, ckpt = tiny_trained
    out = predict_slide(slides["demo_2"], ckpt, tmp_path / "p.zarr", PredictParams(tile=64, overlap=32, min_tissue=0))
    prob = zarr.open_group(out, mode="r")["0"][0].astype(float)  # the model's grid (downscale 2)
    steps = np.abs(np.diff(prob, axis=1)).mean(axis=0)  # mean jump between neighbouring columns
    seams = steps[[31, 63, 95, 127, 159]]  # columns at tile borders (stride 32)
    assert seams.max() < 3 * np.median(steps) + 1


def test_hflip_tta_is_flip_equivariant(tiny_trained):
    _, ckpt = tiny_trained
    model = load_model(ckpt)
    x = torch.randn(2, 3, 64, 64)
    a = predict_batch([model], x, ("hflip",))
    b = predict_batch([model], x.flip(3), ("hflip",)).flip(3)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(predict_batch([model], x), a)


def test_ensemble_of_one_model_twice_equals_the_model(tiny_trained, tmp_path):
    slides, ckpt = tiny_trained
    params = PredictParams(tile=64, overlap=16)
    one = predict_slide(slides["demo_2"], ckpt, tmp_path / "one.zarr", params)
    two = predict_slide(slides["demo_2"], [ckpt, ckpt], tmp_path / "two.zarr", params)
    a, b = (zarr.open_group(p, mode="r")["0"][0].astype(int) for p in (one, two))
    assert np.abs(a - b).max() <= 1


def test_non_tissue_tiles_are_skipped(tiny_trained, tmp_path):
    slides, ckpt = tiny_trained
    out = predict_slide(
        slides["demo_2"], ckpt, tmp_path / "p.zarr", PredictParams(tile=64, overlap=16, min_tissue=0.5, chunk=128)
    )
    root = zarr.open_group(out, mode="r")
    assert root.attrs["tiles_skipped"] > 0
    assert (
        root["labels/mask/0"].shape == (384, 512) and len(root["labels/mask"].attrs["multiscales"][0]["datasets"]) >= 2
    )


def test_blend_windows():
    ramp = blend_window(8, "ramp", overlap=4)
    assert ramp[4, 4] == 1 and ramp[0, 4] < ramp[1, 4] < ramp[3, 4]
    assert (blend_window(8, "constant") == 1).all()
    with pytest.raises(ValueError, match="unknown blend mode"):
        blend_window(8, "box")


def test_bad_tta_op_is_rejected_before_work(tiny_trained, tmp_path):
    slides, ckpt = tiny_trained
    with pytest.raises(ValueError, match="unknown TTA op"):
        predict_slide(
            slides["demo_2"], ckpt, tmp_path / "p.zarr", PredictParams(tile=64, overlap=16, tta=("transpose",))
        )


def test_clean_mask_removes_small_objects_and_fills_holes():
    mask = np.zeros((30, 30), np.uint8)
    mask[2:4, 2:4] = 1  # 4 px object
    mask[10:25, 10:25] = 1
    mask[15:17, 15:17] = 0  # 4 px hole
    out = clean_mask(mask, min_area=10, max_hole=10, open_top=False, open_bottom=False)
    assert out[2:4, 2:4].sum() == 0 and out[15:17, 15:17].all() and out.sum() == 15 * 15


def test_band_processing_gives_the_same_result_as_whole_mask():
    rng = np.random.default_rng(0)
    mask = (rng.random((200, 60)) < 0.45).astype(np.uint8)
    whole = clean_mask(mask, min_area=6, max_hole=5, open_top=False, open_bottom=False)
    store = zarr.create_array(store={}, shape=(200, 60), chunks=(32, 32), dtype="uint8")
    store[:] = mask
    postprocess_mask(store, min_area=6, max_hole=5, band=17, margin=40)
    np.testing.assert_array_equal(store[:], whole)


def test_multiclass_model_writes_class_probabilities_and_argmax(tiny_trained, tmp_path):
    slides, _ = tiny_trained
    torch.manual_seed(0)
    module = SegmentationModule(
        encoder_depth=3, decoder_channels=[16, 8, 4], classes=3, loss={"ce": 1.0}, downscale=2.0, patch_size=64
    )
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "mc.ckpt")
    out = predict_slide(
        slides["demo_2"], tmp_path / "mc.ckpt", tmp_path / "p.zarr", PredictParams(tile=64, overlap=16, min_tissue=0)
    )
    root = zarr.open_group(out, mode="r")
    prob, mask = root["0"][:].astype(int), root["labels/mask/0"][:]
    assert (
        prob.shape == (3, 192, 256) and mask.shape == (384, 512) and root.attrs["classes"] == 3
    )  # probabilities on the model's grid
    assert np.abs(prob.sum(axis=0) - 255).max() <= 3  # softmax over classes
    prob = Prediction(out).probabilities(0) * 255  # upsampled to level 0 as the mask was made
    chosen = np.take_along_axis(prob, mask[None].astype(int), axis=0)[0]
    assert (chosen >= prob.max(axis=0) - 1).all()  # the arg-max class (up to uint8 rounding of ties: 2 x 0.5)
    assert len(np.unique(mask)) > 1


def test_prediction_store_matches_slide_and_threshold(tiny_trained, tmp_path):
    slides, ckpt = tiny_trained
    out = predict_slide(
        slides["demo_2"], ckpt, tmp_path / "p.zarr", PredictParams(tile=64, overlap=16, threshold=0.4, min_tissue=0)
    )
    root = zarr.open_group(out, mode="r")
    assert root["0"].shape == (1, 192, 256)  # the model's grid (downscale 2)
    scale = root.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[-2:] == [2 * root.attrs["mpp"]] * 2 and root.attrs["prob_downscale"] == 2  # the NGFF scale says so
    prob, mask = Prediction(out).probabilities(0)[0] * 255, root["labels/mask/0"][:]
    assert prob.shape == mask.shape == (384, 512)
    assert set(np.unique(mask)) <= {0, 1}
    # the mask is the thresholded probability (up to uint8 rounding of the stored probability)
    assert ((prob > 0.4 * 255 + 1) <= (mask == 1)).all() and ((prob < 0.4 * 255 - 1) <= (mask == 0)).all()
    assert root.attrs["downscale"] == 2


def test_overlap_must_be_smaller_than_tile(tiny_trained, tmp_path):
    slides, _ = tiny_trained
    with pytest.raises(ValueError, match="overlap"):
        predict_slide(slides["demo_2"], tmp_path / "none.ckpt", tmp_path / "p.zarr", PredictParams(tile=64, overlap=64))


def test_gaussian_window_is_positive_and_peaks_in_the_centre():
    w = blend_window(64, "gaussian")
    assert w.min() > 0 and w[32, 32] == w.max() and w[0, 0] < 0.01


@pytest.mark.parametrize("extra", [{}, {"min_area": 20}])
def test_vertical_strips_give_the_whole_width_result(tiny_trained, tmp_path, extra):
    """Wide slides are predicted in strips (memory bounded by the strip, not the slide width): same stores."""
    slides, ckpt = tiny_trained
    stores = []
    for strip in (100_000, 64):  # the demo's 256-px-wide model grid: one strip, or four
        params = PredictParams(tile=64, overlap=16, chunk=64, strip=strip, **extra)
        stores.append(
            zarr.open_group(predict_slide(slides["demo_2"], ckpt, tmp_path / f"s{strip}.zarr", params), mode="r")
        )
    whole, strips = stores
    assert whole.attrs["tiles_total"] == strips.attrs["tiles_total"]
    for key in ("0", "1", "2", "labels/mask/0", "labels/mask/1", "labels/mask/3"):
        np.testing.assert_array_equal(whole[key][:], strips[key][:], err_msg=key)
    assert whole["labels/mask/0"][:].any()


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))],
)
def test_tile_normaliser_reuses_released_batches_and_equals_to_tensor(device):
    """Tiles cut from a band come out as to_tensor would make them, channels_last; a released batch is filled
    again by the next prepare of its shape (no stale pixels), and one still in use is never handed out.  On
    a GPU the batches are page-locked and refilled only after their copy to the device."""
    from wsiseg.predict import TileNormaliser

    rng = np.random.default_rng(0)
    band = rng.integers(0, 256, (300, 700, 3), dtype=np.uint8)
    normaliser = TileNormaliser(torch.device(device))

    def batch(xs):
        prepared = normaliser.prepare([band[:, x : x + 300] for x in xs])
        expected = torch.stack([to_tensor(np.ascontiguousarray(band[:, x : x + 300])) for x in xs])
        got = normaliser(prepared)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(got.cpu(), expected, atol=1e-5)
        return prepared

    first = batch([0, 200])
    second = batch([100, 400])
    assert second is not first  # the first was not released: still in use
    normaliser.release(first)
    assert batch([400, 50]) is first  # refilled with the new tiles (checked against to_tensor inside)
    assert batch([10]) is not first  # another shape: its own buffer


def test_batch_probabilities_computed_into_a_buffer_equal_new_tensors():
    """average_probabilities into a reused buffer: the same result as without, for sigmoid (strided and
    contiguous logits), softmax, and several TTA views summed into it."""
    from wsiseg.predict import average_probabilities

    torch.manual_seed(0)
    wide = torch.randn(2, 3, 8, 8)
    for logits in (wide[:, :1], wide[:, :1].contiguous(), wide):
        views = [(logits, lambda p: p), (logits.flip(3), lambda p: p.flip(3))]
        for outputs in (views[:1], views):
            buffer = torch.full(logits.shape, 7.0)
            expected = average_probabilities(outputs)
            got = average_probabilities(outputs, buffer)
            assert got.data_ptr() == buffer.data_ptr() and torch.allclose(got, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_models_loaded_on_the_cpu_are_moved_to_the_gpu(tiny_trained, tmp_path):
    """Models handed to predict_slide as loaded (on the CPU) run on the device predict chose, with the
    probabilities a CPU run gives (within float16 rounding)."""
    slides, ckpt = tiny_trained
    params = PredictParams(tile=32, overlap=8, batch_size=4, min_tissue=0)
    gpu = predict_slide(slides["demo_2"], ckpt, tmp_path / "gpu.zarr", params, models=[load_model(ckpt)])
    cpu = predict_slide(slides["demo_2"], ckpt, tmp_path / "cpu.zarr", replace(params, device="cpu"))
    a, b = (zarr.open_group(p, mode="r")["0"][:].astype(int) for p in (gpu, cpu))
    assert np.abs(a - b).max() <= 3


class _Hooked(torch.nn.Module):
    """The model of checkpoint ``ckpt``, calling ``before(batch size)`` before each forward."""

    def __init__(self, ckpt, before):
        super().__init__()
        self.model, self.before = load_model(ckpt), before
        self.hparams = self.model.hparams

    def forward(self, x):
        self.before(len(x))
        return self.model(x)


def test_a_model_error_mid_slide_stops_the_reader_and_leaves_no_store(tiny_trained, tmp_path):
    """A model that fails on its third batch: the error reaches the caller, no store is left, and the reader
    thread (which reads tiles ahead) has stopped instead of waiting forever with tiles in hand."""
    import threading

    slides, ckpt = tiny_trained
    calls = []

    def fail_third(n: int) -> None:
        calls.append(n)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory (simulated)")

    # on the CPU, where load_model put the model (on a GPU machine "auto" would hand it CUDA batches)
    params = PredictParams(tile=32, overlap=0, batch_size=2, min_tissue=0, prefetch=1, device="cpu")
    with pytest.raises(RuntimeError, match="simulated"):
        predict_slide(slides["demo_2"], ckpt, tmp_path / "p.zarr", params, models=[_Hooked(ckpt, fail_third)])
    assert len(calls) == 3 and not (tmp_path / "p.zarr").exists()
    assert not [t for t in threading.enumerate() if t.name == "wsiseg-reader"]


def test_the_log_says_where_predicts_time_went(tiny_trained, tmp_path, caplog):
    """The log's step times per thread: with a slow model, its forward is where the model thread's time went
    (the others waited for it); no thread's steps add up to more than the time the tiles took."""
    import logging
    import time

    slides, ckpt = tiny_trained
    batches = []

    def slow(n: int) -> None:
        batches.append(n)
        time.sleep(0.05)

    params = PredictParams(tile=32, overlap=0, batch_size=2, min_tissue=0, device="cpu")
    with caplog.at_level(logging.INFO, logger="wsiseg"):
        predict_slide(slides["demo_2"], ckpt, tmp_path / "p.zarr", params, models=[_Hooked(ckpt, slow)])
    [record] = [r for r in caplog.records if hasattr(r, "step_seconds")]
    steps = record.step_seconds
    for thread in ("model", "reader", "blender"):
        assert f"{thread}: " in record.getMessage()
        mine = {name: s for name, s in steps.items() if name.startswith(f"{thread}: ")}
        assert mine and sum(mine.values()) <= steps["tiles"] + 0.05, (thread, mine)
    model_steps = {name: s for name, s in steps.items() if name.startswith("model: ")}
    assert steps["model: forward"] >= 0.05 * len(batches) and max(model_steps, key=model_steps.get) == "model: forward"


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))],
)
def test_precast_weights_give_autocasts_outputs_without_casting_them_per_batch(tiny_trained, device):
    """On a GPU predict runs a copy of each model whose convolution weights are already in autocast's
    precision: the same outputs as autocast casting them for every batch, fewer casts per batch, and the
    caller's model untouched (also checked with the CPU's autocast, bfloat16: the same code)."""
    from torch.profiler import ProfilerActivity, profile

    from wsiseg.predict import precast

    _, ckpt = tiny_trained
    dtype = torch.get_autocast_dtype(device)
    model = load_model(ckpt).eval().to(device)
    cast = precast(model, dtype)
    x = torch.randn(2, 3, 64, 64, device=device)

    def run(m):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            with torch.inference_mode(), torch.autocast(device, dtype=dtype):
                out = m(x)
        return out, sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")

    calls = []
    hooks = [
        m.register_forward_pre_hook(lambda conv, _: calls.append(1 + (conv.bias is not None)))
        for m in model.modules()
        if type(m) is torch.nn.Conv2d
    ]
    (expected, casts), (got, cast_casts) = run(model), run(cast)
    for hook in hooks:
        hook.remove()
    assert got.dtype == expected.dtype and torch.equal(got, expected)
    assert casts - cast_casts == sum(calls) > 0  # each convolution's weight (and bias) was cast in every call before
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert {p.dtype for m in cast.modules() if type(m) is torch.nn.Conv2d for p in m.parameters()} == {dtype}


def test_precast_falls_back_to_the_model_where_casting_once_breaks_it(tiny_trained, caplog):
    """A model with a layer run with autocast switched off (its input stays float32) fails with weights cast
    once: predict then keeps the model as it is, with a warning, instead of failing; a plain model is cast."""
    import logging

    from wsiseg.predict import precast_checked

    _, ckpt = tiny_trained
    model = load_model(ckpt).eval()

    class Float32Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = model, torch.nn.Conv2d(1, 1, 1)

        def forward(self, x):
            with torch.autocast("cpu", enabled=False):
                return self.head(self.body(x).float())

    probe = torch.randn(1, 3, 64, 64)
    cast = precast_checked(model, torch.bfloat16, probe)
    assert (
        cast is not model
        and next(m for m in cast.modules() if type(m) is torch.nn.Conv2d).weight.dtype == torch.bfloat16
    )
    fragile = Float32Head().eval()
    with caplog.at_level(logging.WARNING, logger="wsiseg"):
        assert precast_checked(fragile, torch.bfloat16, probe) is fragile
    assert "cast for every batch" in caplog.text
