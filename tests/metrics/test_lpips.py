from __future__ import annotations

import pytest
import torch
from torch import nn

from medgen3d.data.io import DataError
from medgen3d.metrics.fidelity import TorchScriptFeatures
from medgen3d.metrics.lpips import TorchScriptLPIPS, view_lpips_diversity


class _MeanAbsolute(nn.Module):
    """A stand-in perceptual distance with a known answer: mean |x - y| per pair, shaped like LPIPS's output."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 3
        return (x - y).abs().mean(dim=(1, 2, 3), keepdim=True)


class _ChannelStats(nn.Module):
    """A stand-in feature network: per-channel means of a fixed 1x1 convolution, as a (B, 4, h, w) map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(12, dtype=torch.float32).view(4, 3, 1, 1) / 10)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def save_script(module: nn.Module, path) -> str:
    torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


def test_lpips_diversity_is_zero_for_copies_and_the_known_offsets_otherwise(tmp_path):
    distance = TorchScriptLPIPS(save_script(_MeanAbsolute(), tmp_path / "lpips.pt"))
    volume = torch.rand(12, 10, 8, generator=torch.Generator().manual_seed(0)) * 0.4 - 0.8
    copies = view_lpips_diversity(distance, [volume, volume.clone(), volume.clone()])
    assert all(v == 0.0 for v in copies.values()) and set(copies) == {"axial", "coronal", "sagittal", "mean"}
    shifted = view_lpips_diversity(distance, [volume, volume + 0.2, volume + 0.5])
    assert all(v == pytest.approx((0.2 + 0.5 + 0.3) / 3, abs=1e-6) for v in shifted.values())
    # at most max_pairs case pairs: with one pair drawn, the mean is one of the three offsets
    one = view_lpips_diversity(distance, [volume, volume + 0.2, volume + 0.5], max_pairs=1, seed=3)
    assert min(abs(one["mean"] - d) for d in (0.2, 0.3, 0.5)) < 1e-6


def test_torchscript_features_resize_repeat_and_pool(tmp_path):
    features = TorchScriptFeatures(save_script(_ChannelStats(), tmp_path / "features.pt"), input_size=(16, 16))
    slices = torch.rand(5, 1, 12, 9, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = features(slices)
    assert out.shape == (5, 4) and out.dtype == torch.float64
    # each channel is (sum of its three weights) x (mean of the resized slice): bilinear resizing keeps a constant
    constant = features(torch.full((2, 1, 12, 9), 0.5))
    torch.testing.assert_close(constant[0], torch.tensor([0.3, 1.2, 2.1, 3.0], dtype=torch.float64) * 0.5)


def test_missing_or_broken_weight_files_are_named(tmp_path):
    with pytest.raises(DataError, match="lpips.pt: LPIPS network file not found"):
        TorchScriptLPIPS(tmp_path / "lpips.pt")
    junk = tmp_path / "inception.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(DataError, match="inception.pt: not a TorchScript file"):
        TorchScriptFeatures(junk)
    with pytest.raises(DataError, match="feature network file not found"):
        TorchScriptFeatures(tmp_path / "none.pt")
