from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import FIDMetric
from monai.networks.nets import UNet

from medgen3d.metrics.fidelity import (
    FeatureExtractor,
    bottleneck_name,
    frechet_distance,
    view_frechet_distances,
    view_slices,
)


def small_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2))


def head_volumes(count: int, size: int = 8) -> list[torch.Tensor]:
    """Background -1 around a random-intensity cube, different per volume.

    Cubes give every view the same slice shape, and CPU kernels are slow only the first time they meet a shape.
    """
    generator = torch.Generator().manual_seed(1)
    volumes = []
    for _ in range(count):
        volume = -torch.ones(size, size, size)
        volume[2:-2, 2:-2, 2:-2] = torch.rand(size - 4, size - 4, size - 4, generator=generator) * 2 - 1
        volumes.append(volume)
    return volumes


def test_frechet_distance_is_zero_for_identical_sets_and_the_squared_shift_for_shifted_ones():
    features = np.random.default_rng(0).normal(size=(200, 4)) @ np.diag([1.0, 2.0, 0.5, 1.5])
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    # Equal covariances cancel (tr S + tr S - 2 tr sqrt(S S) = 0), leaving |c|^2 = 5.25.
    assert frechet_distance(features + shift, torch.as_tensor(features)) == pytest.approx(5.25, rel=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(features[:1], features)
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(features, features[:, :3])


def test_frechet_distance_matches_the_closed_form_for_scaled_features_and_monais_fid():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(400, 3)) @ np.array([[1.0, 0.5, 0.0], [0.0, 2.0, -0.7], [0.3, 0.0, 0.5]])  # correlated
    shift = np.array([0.2, 0.0, -1.0])
    b = 3.0 * (a - a.mean(0)) + a.mean(0) + shift
    # C_b = 9 C_a, so tr sqrt(C_a^1/2 C_b C_a^1/2) = 3 tr C_a and the distance is |shift|^2 + (1 - 3)^2 tr C_a
    expected = (shift**2).sum() + 4 * np.trace(np.cov(a.T))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)

    scipy_linalg = pytest.importorskip("scipy.linalg")
    if "disp" not in inspect.signature(scipy_linalg.sqrtm).parameters:
        pytest.skip("MONAI 1.6's FIDMetric needs scipy.linalg.sqrtm(disp=...), which this scipy removed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        monai_fid = float(FIDMetric()(torch.as_tensor(a), torch.as_tensor(b)))
    assert frechet_distance(a, b) == pytest.approx(monai_fid, rel=1e-6)


def test_view_slices_have_the_view_layout_and_drop_background_slices():
    volume = -torch.ones(6, 5, 4)
    volume[1:3, :, 2] = 0.5  # foreground only in axial slice 2, sagittal slices 1-2, every coronal slice
    assert view_slices(volume, "axial").shape == (4, 1, 6, 5)
    assert view_slices(volume, "coronal").shape == (5, 1, 6, 4)
    assert view_slices(volume, "sagittal").shape == (6, 1, 5, 4)
    assert torch.equal(view_slices(volume, "axial")[2, 0], volume[:, :, 2])
    # Foreground fractions: axial slice 2 10/30, sagittal slices 1-2 5/20, every coronal slice 2/24.
    kept = view_slices(volume, "axial", min_foreground=0.05)
    assert kept.shape == (1, 1, 6, 5) and torch.equal(kept[0, 0], volume[:, :, 2])
    assert view_slices(volume, "sagittal", min_foreground=0.05).shape == (2, 1, 5, 4)
    assert view_slices(volume, "coronal", min_foreground=0.05).shape == (5, 1, 6, 4)
    assert view_slices(volume, "coronal", min_foreground=0.1).shape == (0, 1, 6, 4)
    assert view_slices(volume, "axial", min_foreground=0.5).shape[0] == 0
    with pytest.raises(ValueError, match="view must be one of"):
        view_slices(volume, "oblique")


def test_bottleneck_of_a_monai_unet_has_the_deepest_channels_at_a_quarter_resolution():
    network = small_unet()
    name = bottleneck_name(network)
    outputs = []
    dict(network.named_modules())[name].register_forward_hook(lambda m, a, out: outputs.append(out))
    network(torch.zeros(1, 1, 16, 24))
    assert outputs[0].shape == (1, 32, 4, 6)
    with pytest.raises(ValueError, match="Conv2d.*layer="):
        bottleneck_name(torch.nn.Conv2d(1, 1, 3))


def test_feature_extractor_pools_the_layer_deterministically_and_pads_odd_sizes():
    network = small_unet().train()
    extract = FeatureExtractor(network, batch_size=3)
    slices = torch.rand(7, 1, 13, 10) * 2 - 1  # not a multiple of the UNet's total stride 4
    features = extract(slices)
    assert features.shape == (7, 32) and features.dtype == torch.float64
    assert torch.equal(features, extract(slices))
    assert torch.allclose(features[2:4], extract(slices[2:4]))  # batching does not change a slice's features
    assert network.training  # mode restored
    assert not network.model[0]._forward_hooks  # hook removed
    with pytest.raises(ValueError, match="not a module"):
        FeatureExtractor(network, layer="model.9")


def test_feature_extractor_stops_the_forward_pass_at_its_layer_with_the_full_pass_features():
    network = small_unet().eval()
    extract = FeatureExtractor(network, batch_size=4)
    slices = torch.rand(6, 1, 16, 24) * 2 - 1  # multiples of 8: no padding, so the reference sees the same input
    captured = []
    bottleneck = dict(network.named_modules())[extract.layer]
    handle = bottleneck.register_forward_hook(lambda m, a, out: captured.append(out.flatten(2).mean(2)))
    with torch.no_grad():
        network(slices)  # the whole network, as a reference
    handle.remove()
    decoder_calls = []
    network.model[2].register_forward_hook(lambda m, a, out: decoder_calls.append(out.shape))
    features = extract(slices)
    assert torch.allclose(features, captured[0].double(), atol=1e-6)
    assert decoder_calls == []  # the last up-sampling layer never ran
    assert not bottleneck._forward_hooks  # the stopping hook is removed


def test_view_frechet_distances_are_zero_for_a_set_against_itself_and_positive_against_inverted_intensities():
    extract = FeatureExtractor(small_unet())
    real = head_volumes(4)
    same = view_frechet_distances(extract, real, real)
    assert set(same) == {"axial", "coronal", "sagittal", "mean"}
    assert all(value == pytest.approx(0.0, abs=1e-6) for value in same.values())
    inverted = [-v for v in real]
    different = view_frechet_distances(extract, inverted, real)
    assert all(value > 1e-3 for value in different.values())
    assert different["mean"] == pytest.approx(np.mean([different[v] for v in ("axial", "coronal", "sagittal")]))
    assert set(view_frechet_distances(extract, inverted, real, views=("axial",))) == {"axial", "mean"}
