"""Fidelity: Fréchet distance between learned features of synthetic and real slices, per view.

MedGen3D reports FID averaged over 2D slices of the three views (axial, coronal, sagittal). No Inception weights
can be downloaded here, so the default feature network is a 2D segmentation network the project trains on real
data; its features are the spatial means of one layer (by default the bottleneck of a MONAI ``UNet``). A user with
Inception weights on disk passes them as a TorchScript file (:class:`TorchScriptFeatures`) for the usual FID.

Volumes are ``(H, W, D)`` tensors scaled to [-1, 1] (background at -1); slices are ``(N, 1, a, b)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet
from torch import nn

from medgen3d.torchscript import load_torchscript
from medgen3d.views import check_views, to_view

__all__ = [
    "view_slices",
    "bottleneck_name",
    "FeatureExtractor",
    "TorchScriptFeatures",
    "frechet_distance",
    "view_features",
    "frechet_distances",
    "view_frechet_distances",
]

# A voxel counts as foreground when it is above the [-1, 1] background value by more than rounding noise.
_BACKGROUND_MARGIN = 1e-3


def view_slices(volume: torch.Tensor, view: str, min_foreground: float = 0.0) -> torch.Tensor:
    """The slices of one view of a volume.

    Args:
        volume: ``(H, W, D)`` in [-1, 1].
        view: ``"axial"``, ``"coronal"`` or ``"sagittal"`` (see :data:`medgen3d.views.VIEWS`).
        min_foreground: slices whose fraction of voxels above the background value (-1) is below this are
            dropped, so that the empty slices outside the body do not dominate the feature statistics.

    Returns:
        ``(N, 1, a, b)``, ``N`` slices along the view's axis (fewer when some are dropped).
    """
    volume = torch.as_tensor(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be (H, W, D), got shape {tuple(volume.shape)}")
    slices = to_view(volume[None], view)
    if min_foreground > 0:
        foreground = (slices > -1 + _BACKGROUND_MARGIN).flatten(1).float().mean(1)
        slices = slices[foreground >= min_foreground]
    return slices


def bottleneck_name(network: nn.Module) -> str:
    """The dotted name (as in ``network.named_modules()``) of the deepest block of a MONAI ``UNet``.

    The UNet nests ``Sequential(down, SkipConnection(submodule), up)`` levels; the walk follows ``[1].submodule``
    down to the bottom layer. When that layer is a plain :class:`~monai.networks.blocks.Convolution` (UNets with
    ``num_res_units=0``) its convolution is returned instead: the block ends in a per-sample (instance) norm,
    which would make every channel's spatial mean nearly the same for all inputs. A ``ResidualUnit`` bottom adds
    its un-normalised residual path, so the block itself is returned.

    Raises:
        ValueError: ``network`` is not a MONAI ``UNet``; pass ``layer=`` to :class:`FeatureExtractor` instead.
    """
    if not isinstance(network, UNet):
        raise ValueError(
            f"bottleneck_name knows only monai.networks.nets.UNet, got {type(network).__name__}; "
            "pass layer= (a name from network.named_modules()) to FeatureExtractor"
        )
    name, node = "model", network.model
    while isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection):
        name, node = f"{name}.1.submodule", node[1].submodule
    return f"{name}.conv" if isinstance(node, Convolution) else name


class _LayerReached(Exception):
    """Raised by the capturing hook to end the forward pass once the wanted layer has run."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__("feature layer reached")
        self.output = output


@contextmanager
def _stopping_at(module: nn.Module) -> Iterator[None]:
    """While open, ``module``'s first output in a forward pass ends that pass with :class:`_LayerReached`.

    Only the layer's output is pooled, so the layers after it (a UNet's whole decoder, at full resolution) would be
    wasted work. The hook never outlives the context.
    """

    def stop(_module: nn.Module, _args: object, output: torch.Tensor) -> None:
        raise _LayerReached(output)

    handle = module.register_forward_hook(stop)
    try:
        yield
    finally:
        handle.remove()


class FeatureExtractor:
    """Features of 2D slices: the spatial mean of one layer's output of a trained 2D network.

    The forward pass ends at that layer (the layers after it do not run), and the layer's first output in a pass
    is the one pooled.

    Args:
        network: a 2D network taking ``(B, 1, a, b)``; it is run in eval mode under ``torch.no_grad()`` and its
            training mode is restored afterwards.
        layer: dotted module name whose output is pooled; default :func:`bottleneck_name` (MONAI ``UNet`` only).
        batch_size: slices per forward pass.
        size_multiple: slices are padded with the background value -1 (on the far side) to a multiple of this,
            the network's total downsampling, so that any slice size works.
    """

    def __init__(
        self, network: nn.Module, layer: str | None = None, batch_size: int = 32, size_multiple: int = 8
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if size_multiple < 1:
            raise ValueError(f"size_multiple must be positive, got {size_multiple}")
        self.network = network
        self.layer = bottleneck_name(network) if layer is None else layer
        modules = dict(network.named_modules())
        if self.layer not in modules:
            raise ValueError(f"layer {self.layer!r} is not a module of {type(network).__name__}")
        self.module = modules[self.layer]
        self.batch_size = batch_size
        self.size_multiple = size_multiple
        self.description = f"{type(network).__name__} layer {self.layer!r} features"

    def _pad(self, slices: torch.Tensor) -> torch.Tensor:
        a, b = slices.shape[-2:]
        pad_a, pad_b = (-a) % self.size_multiple, (-b) % self.size_multiple
        return F.pad(slices, (0, pad_b, 0, pad_a), value=-1.0)

    def __call__(self, slices: torch.Tensor) -> torch.Tensor:
        """``(N, 1, a, b)`` slices -> ``(N, C)`` float64 features on the CPU (``C``: the layer's channels)."""
        if slices.ndim != 4:
            raise ValueError(f"slices must be (N, 1, a, b), got shape {tuple(slices.shape)}")
        parameter = next(self.network.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        was_training = self.network.training
        self.network.eval()
        features = []
        try:
            with torch.no_grad(), _stopping_at(self.module):
                for batch in torch.split(slices, self.batch_size):
                    try:
                        self.network(self._pad(batch.float()).to(device))
                    except _LayerReached as reached:
                        features.append(reached.output.flatten(2).mean(2).double().cpu())
                    else:
                        raise RuntimeError(f"layer {self.layer!r} was not run by the network's forward pass")
        finally:
            self.network.train(was_training)
        if not features:
            raise ValueError("no slices to extract features from")
        return torch.cat(features)


class TorchScriptFeatures:
    """Features of 2D slices from a local TorchScript feature network, such as an Inception-v3 pool layer for the
    usual FID, for users who have such weights on disk (none can be downloaded by this project).

    Slices in [-1, 1] are repeated to ``channels`` channels and resized (bilinear) to ``input_size``; the network's
    output is flattened, after a spatial mean when it is a feature map.

    Args:
        path: the TorchScript file (``torch.jit.save``); it must map ``(B, channels, *input_size)`` to ``(B, F)`` or
            ``(B, F, ...)``. Its input normalisation is its own: it receives values in [-1, 1].
        input_size: the network's input size, e.g. ``(299, 299)`` for Inception-v3.
        channels: the network's input channels.
        batch_size: slices per forward pass.
    """

    def __init__(
        self, path: str | os.PathLike, input_size: Sequence[int] = (299, 299), channels: int = 3, batch_size: int = 32
    ) -> None:
        self.network = load_torchscript(path, "feature network file")
        self.input_size, self.channels, self.batch_size = tuple(int(n) for n in input_size), channels, batch_size
        self.description = f"features of {Path(path).name}"

    def __call__(self, slices: torch.Tensor) -> torch.Tensor:
        """``(N, 1, a, b)`` slices -> ``(N, F)`` float64 features on the CPU."""
        if slices.ndim != 4:
            raise ValueError(f"slices must be (N, 1, a, b), got shape {tuple(slices.shape)}")
        features = []
        with torch.no_grad():
            for batch in torch.split(slices.float(), self.batch_size):
                batch = F.interpolate(batch, size=self.input_size, mode="bilinear", align_corners=False)
                out = self.network(batch.expand(-1, self.channels, -1, -1))
                features.append((out.flatten(2).mean(2) if out.ndim > 2 else out).double().cpu())
        if not features:
            raise ValueError("no slices to extract features from")
        return torch.cat(features)


def frechet_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

    ``|mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr((C_a^1/2 C_b C_a^1/2)^1/2)``, with unbiased covariances. The
    square roots are taken of symmetric matrices by ``torch.linalg.eigh`` rather than through MONAI's
    ``FIDMetric``, which calls ``scipy.linalg.sqrtm`` with an argument that scipy 1.18 removed; the two agree
    (tested) where both run.

    Args:
        a: ``(N, F)`` features, ``N >= 2``.
        b: ``(M, F)`` features, ``M >= 2``.

    Returns:
        The distance, >= 0 (rounding can leave a tiny negative value; it is clipped).
    """
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"{name} must be (N, F) with N >= 2 to have a covariance, got shape {tuple(x.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: a has {a.shape[1]}, b has {b.shape[1]}")
    # reshape: with one feature torch.cov returns a scalar
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _psd_sqrt(cov_a)
    # C_a^1/2 C_b C_a^1/2 is symmetric positive semi-definite and has the eigenvalues of C_a C_b
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    distance = (a.mean(0) - b.mean(0)).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(float(distance), 0.0)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The square root of a symmetric positive semi-definite ``(F, F)`` matrix (negative rounding clipped)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def view_features(
    extract: Callable[[torch.Tensor], torch.Tensor | np.ndarray],
    volumes: Sequence[torch.Tensor],
    views: Sequence[str] = ("axial", "coronal", "sagittal"),
    min_foreground: float = 0.05,
) -> dict[str, torch.Tensor]:
    """The features of every slice of ``volumes`` with enough foreground, per view: ``{view: (N_view, F)}``.

    Args:
        extract: slices ``(N, 1, a, b)`` -> features ``(N, F)``, e.g. a :class:`FeatureExtractor`.
        volumes: ``(H, W, D)`` in [-1, 1]; shapes may differ between volumes.
        views: the views, without repeats (checked by :func:`medgen3d.views.check_views`).
        min_foreground: see :func:`view_slices`.
    """

    def features(view: str) -> torch.Tensor:
        # One volume at a time: volumes may differ in shape, and the slices of a whole set need not fit in memory.
        slices = (view_slices(v, view, min_foreground) for v in volumes)
        per_volume = [torch.as_tensor(extract(s)) for s in slices if len(s)]
        if not per_volume:
            raise ValueError(f"no {view} slice has a foreground fraction of at least {min_foreground}")
        return torch.cat(per_volume)

    return {view: features(view) for view in check_views(views)}


def frechet_distances(synthetic: Mapping[str, torch.Tensor], real: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """:func:`frechet_distance` per view of two :func:`view_features` results, plus ``"mean"`` over the views."""
    distances = {view: frechet_distance(synthetic[view], real[view]) for view in synthetic}
    distances["mean"] = float(np.mean(list(distances.values())))
    return distances


def view_frechet_distances(
    extract: Callable[[torch.Tensor], torch.Tensor | np.ndarray],
    synthetic: Sequence[torch.Tensor],
    real: Sequence[torch.Tensor],
    views: Sequence[str] = ("axial", "coronal", "sagittal"),
    min_foreground: float = 0.05,
) -> dict[str, float]:
    """Fréchet distance between features of synthetic and real slices, per view and averaged over the views.

    Args:
        extract: slices ``(N, 1, a, b)`` -> features ``(N, F)``, e.g. a :class:`FeatureExtractor`.
        synthetic: volumes ``(H, W, D)`` in [-1, 1]; shapes may differ between volumes.
        real: volumes ``(H, W, D)`` in [-1, 1].
        views: the views to compare, without repeats (checked by :func:`medgen3d.views.check_views`).
        min_foreground: see :func:`view_slices`.

    Returns:
        ``{view: distance}`` for each view, plus ``"mean"`` over the views.
    """
    return frechet_distances(
        view_features(extract, synthetic, views, min_foreground), view_features(extract, real, views, min_foreground)
    )
