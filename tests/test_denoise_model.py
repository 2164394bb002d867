"""The denoiser network: any size, tiling, residual learning that overfits one pair."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from denoise_tiny import TINY, noisy_copy, one_thread, smooth_picture  # noqa: F401
from PIL import Image

from captioner.denoise.denoiser import Denoiser
from captioner.denoise.metrics import psnr, ssim
from captioner.denoise.model import DenoiserConfig, DenoiserNet, PixelLayerNorm

NORMED = dataclasses.replace(TINY, norm="layer")


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (17, 33), (64, 48), (101, 7)])
def test_any_size_keeps_its_shape(size: tuple[int, int]) -> None:
    net = DenoiserNet(TINY).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        assert net(x).shape == x.shape


@pytest.mark.parametrize(("activation", "residual"), [("leaky_relu", True), ("relu", False)])
def test_starts_close_to_the_identity(activation: str, residual: bool) -> None:
    torch.manual_seed(0)
    net = DenoiserNet(DenoiserConfig(activation=activation, residual=residual)).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        change = (net(x) - x).abs()
    assert change.mean() < 0.03 and change.max() < 0.15  # a random net would change everything


def test_models_saved_before_these_settings_are_plain_relu_models() -> None:
    old = DenoiserConfig(widths=(8, 16), depths=(1, 1), activation="relu", residual=False)
    saved = old.to_dict()
    del saved["activation"], saved["residual"]
    assert DenoiserConfig.from_dict(saved) == old
    assert DenoiserConfig().activation == "leaky_relu" and DenoiserConfig().residual
    net = DenoiserNet(DenoiserConfig.from_dict(saved))
    assert any(isinstance(m, torch.nn.ReLU) for m in net.modules())
    # the same weights layout as before: an old model's state loads strictly
    assert all(".scale" not in name for name in net.state_dict())
    with pytest.raises(ValueError, match="unknown activation"):
        DenoiserConfig(activation="gelu")


def test_residual_gains_start_from_the_configured_value() -> None:
    def gains(config: DenoiserConfig) -> set[float]:
        net = DenoiserNet(config)
        return {round(float(p), 6) for n, p in net.named_parameters() if n.endswith(".scale")}

    assert gains(TINY) == {0.0}
    assert gains(DenoiserConfig(widths=(8, 16), depths=(1, 2), residual_gain=0.1)) == {0.1}
    saved = DenoiserConfig(widths=(8, 16), depths=(1, 2)).to_dict()
    del saved["residual_gain"]  # saved before the setting existed
    assert DenoiserConfig.from_dict(saved).residual_gain == 0.0


@pytest.mark.parametrize("config", [TINY, NORMED], ids=["plain", "layer-norm"])
def test_inference_copy_folds_the_scales_and_computes_the_same_function(
    config: DenoiserConfig,
) -> None:
    torch.manual_seed(0)
    net = DenoiserNet(config).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".scale"):
                p.fill_(0.7)  # trained scales are not 0: folding must change the weights
        net.tail.weight.normal_(0.0, 0.05)
    fast = net.for_inference()
    assert not any(name.endswith(".scale") for name in fast.state_dict())
    assert any(name.endswith(".scale") for name in net.state_dict())  # the original is kept
    assert fast.residual_gains() == [] and len(net.residual_gains()) == sum(TINY.depths) * 2 - 1
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        expected, got = net(x), fast(x.contiguous(memory_format=torch.channels_last))
    assert (expected - x).abs().mean() > 1e-3  # the comparison is not between identities
    assert torch.allclose(expected, got, atol=1e-5)
    assert torch.allclose(Denoiser(net, "x").denoise_tensor(x), expected.clamp(0, 1), atol=1e-5)


@pytest.mark.parametrize("config", [TINY, NORMED], ids=["plain", "layer-norm"])
def test_tiles_give_the_whole_image_result(config: DenoiserConfig) -> None:
    torch.manual_seed(0)
    net = DenoiserNet(config)
    with torch.no_grad():
        net.tail.weight.normal_(0.0, 0.05)
    picture = Image.fromarray(noisy_copy(smooth_picture(150, 170), 25))
    whole = np.asarray(Denoiser(net, "x", tile=512)(picture), dtype=np.int16)
    tiled = np.asarray(Denoiser(net, "x", tile=64, overlap=16)(picture), dtype=np.int16)
    assert whole.shape == tiled.shape == (150, 170, 3)
    assert np.abs(whole - tiled).max() <= 1


def test_grey_and_alpha_pictures_come_back_rgb_of_the_same_size() -> None:
    denoiser = Denoiser(DenoiserNet(TINY), "x")
    for mode in ("L", "RGBA", "LA", "P", "1"):
        out = denoiser(Image.new(mode, (23, 11)))
        assert out.mode == "RGB" and out.size == (23, 11)


def test_overfits_one_noisy_pair() -> None:
    torch.manual_seed(0)
    clean_np = smooth_picture(32, 32)
    clean = torch.from_numpy(clean_np).permute(2, 0, 1)[None].float() / 255
    noisy = torch.from_numpy(noisy_copy(clean_np, 50)).permute(2, 0, 1)[None].float() / 255
    net = DenoiserNet(DenoiserConfig(widths=(16, 32), depths=(1, 1)))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    with torch.no_grad():
        before = float(psnr(net(noisy), clean))
    history = []
    for _ in range(150):
        loss = F.l1_loss(net(noisy), clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            history.append(float(psnr(net(noisy).clamp(0, 1), clean)))
    assert max(history[-10:]) > before + 6.0, (before, history[-10:])


def test_layer_norm_normalises_each_pixel_over_its_channels() -> None:
    torch.manual_seed(0)
    norm = PixelLayerNorm(5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 6.0))
        norm.bias.fill_(0.5)
    x = torch.randn(2, 5, 3, 4) * 3 + 1
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight.view(1, 5, 1, 1) + 0.5
    assert torch.allclose(norm(x), expected, atol=1e-5)
    last = x.contiguous(memory_format=torch.channels_last)
    assert torch.allclose(norm(last), expected, atol=1e-5)
    # one pixel's result depends on that pixel only (what keeps tiles exact)
    changed = x.clone()
    changed[:, :, 0, 0] += 10
    assert torch.equal(norm(changed)[:, :, 1:], norm(x)[:, :, 1:])


def test_norm_setting_round_trips_and_old_models_have_none() -> None:
    assert DenoiserConfig.from_dict(NORMED.to_dict()) == NORMED
    saved = TINY.to_dict()
    del saved["norm"]  # saved before the setting existed
    assert DenoiserConfig.from_dict(saved).norm == "none"
    plain = DenoiserNet(TINY)
    assert not any(isinstance(m, PixelLayerNorm) for m in plain.modules())
    normed = DenoiserNet(NORMED)
    assert sum(isinstance(m, PixelLayerNorm) for m in normed.modules()) == len(
        normed.residual_gains()
    )
    with pytest.raises(ValueError, match="unknown norm"):
        DenoiserConfig(norm="batch")
    with pytest.raises(ValueError, match="needs residual"):
        DenoiserConfig(norm="layer", residual=False)


def test_config_round_trip_and_bad_sizes() -> None:
    config = DenoiserConfig(widths=(8, 16, 32), depths=(1, 2, 3), residual_gain=0.1)
    assert DenoiserConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        DenoiserConfig(widths=(8, 16), depths=(1,))
    with pytest.raises(ValueError):
        DenoiserConfig.from_dict({"widths": [8], "depths": [1], "colour": 3})
    assert DenoiserNet(config).multiple == 8


def test_metrics_match_skimage() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((40, 50, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    ta, tb = (torch.from_numpy(z).permute(2, 0, 1)[None] for z in (a, b))
    expected = metrics.structural_similarity(
        a,
        b,
        data_range=1.0,
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert float(ssim(tb, ta)) == pytest.approx(expected, abs=1e-4)
    assert float(psnr(tb, ta)) == pytest.approx(metrics.peak_signal_noise_ratio(a, b), abs=1e-3)


def test_self_ensemble_averages_mapped_back_copies_and_is_equivariant() -> None:
    torch.manual_seed(0)
    net = DenoiserNet(TINY).eval()
    with torch.no_grad():
        net.tail.weight.normal_(0.0, 0.05)
    x = torch.rand(1, 3, 40, 56)  # not square: the turned copies are 56 x 40
    single, mirrored, dihedral = (Denoiser(net, "x", self_ensemble=k) for k in (1, 2, 8))
    once = single.denoise_tensor(x)
    expected = (once + single.denoise_tensor(x.flip(-1)).flip(-1)) / 2
    assert torch.allclose(mirrored.denoise_tensor(x), expected, atol=1e-6)
    assert (mirrored.denoise_tensor(x) - once).abs().max() > 1e-3  # the mirror adds something
    for transform in (lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.transpose(-2, -1)):
        assert torch.allclose(
            dihedral.denoise_tensor(transform(x)), transform(dihedral.denoise_tensor(x)), atol=1e-5
        )
    assert not torch.allclose(single.denoise_tensor(x.flip(-2)), once.flip(-2), atol=1e-5)
    with pytest.raises(ValueError, match="self_ensemble"):
        Denoiser(net, "x", self_ensemble=3)
