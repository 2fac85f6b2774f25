"""Diversity: mean pairwise 3D MS-SSIM among the cases of a set (lower = more diverse).

MedGen3D compares the MS-SSIM among its synthetic volumes with that among real ones: a generator that copies a few
layouts scores higher than the real data. Volumes are ``(H, W, D)`` tensors in [-1, 1].
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric

__all__ = ["MsSsimSettings", "ms_ssim_settings", "pairwise_ms_ssim", "Spread", "Diversity", "diversity"]

# Wang et al. (2003): weights of the five scales, finest first.
STANDARD_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_KERNEL_SIZES = (11, 7, 5, 3)
_PAIRS_PER_BATCH = 8


class MsSsimSettings(NamedTuple):
    """Arguments of ``MultiScaleSSIMMetric`` that fit a volume size: Gaussian ``kernel_size``, scale ``weights``."""

    kernel_size: int
    weights: tuple[float, ...]


def _fits(size: int, kernel_size: int, scales: int) -> bool:
    # Two conditions: the coarsest scale (size halved scales-1 times) must hold one kernel, since MONAI's SSIM
    # convolution has no padding; and MONAI's own up-front check, which divides by (scales-1)**2, not 2**(scales-1).
    return size // 2 ** (scales - 1) >= kernel_size and size // max(1, scales - 1) ** 2 > kernel_size - 1


def ms_ssim_settings(shape: Sequence[int]) -> MsSsimSettings:
    """The most scales (at most 5), then the largest kernel in (11, 7, 5, 3), that MS-SSIM allows for ``shape``.

    With fewer than five scales the first (finest) standard weights are used, renormalised to sum to 1.

    Args:
        shape: spatial size, e.g. ``(H, W, D)``.

    Raises:
        ValueError: even one scale with a 3-voxel kernel does not fit the smallest side.
    """
    smallest = min(shape)
    for scales in range(len(STANDARD_WEIGHTS), 0, -1):
        for kernel_size in _KERNEL_SIZES:
            if _fits(smallest, kernel_size, scales):
                weights = np.asarray(STANDARD_WEIGHTS[:scales])
                return MsSsimSettings(kernel_size, tuple(float(w) for w in weights / weights.sum()))
    raise ValueError(
        f"shape {tuple(shape)} is too small for MS-SSIM: every side must be at least {min(_KERNEL_SIZES)} voxels"
    )


def _as_batch(volumes: Sequence[torch.Tensor]) -> torch.Tensor:
    # SSIM's luminance term assumes non-negative intensities, so [-1, 1] is moved to [0, 2] (same data range).
    return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in volumes])[:, None] + 1.0


def pairwise_ms_ssim(
    volumes: Sequence[torch.Tensor], data_range: float = 2.0, max_pairs: int | None = None, seed: int = 0
) -> np.ndarray:
    """3D MS-SSIM of every unordered pair of volumes, or of a random subset of pairs.

    Args:
        volumes: at least two ``(H, W, D)`` volumes of one shape, in [-1, 1].
        data_range: width of the intensity range.
        max_pairs: when set and smaller than the number of pairs, this many pairs drawn without replacement.
        seed: seeds the draw of pairs; the same seed draws the same pairs.

    Returns:
        ``(P,)`` float64, one MS-SSIM per pair, pairs in ``itertools.combinations`` order.
    """
    if len(volumes) < 2:
        raise ValueError(f"pairwise MS-SSIM needs at least two volumes, got {len(volumes)}")
    shapes = {tuple(v.shape) for v in volumes}
    if len(shapes) > 1:
        raise ValueError(f"all volumes must share one shape, got {sorted(shapes)}")
    shape = shapes.pop()
    if len(shape) != 3:
        raise ValueError(f"volumes must be (H, W, D), got shape {shape}")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be positive, got {max_pairs}")

    pairs = list(itertools.combinations(range(len(volumes)), 2))
    if max_pairs is not None and max_pairs < len(pairs):
        chosen = np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False)
        pairs = [pairs[i] for i in sorted(chosen)]

    settings = ms_ssim_settings(shape)
    metric = MultiScaleSSIMMetric(
        spatial_dims=3, data_range=data_range, kernel_size=settings.kernel_size, weights=settings.weights
    )
    batch = _as_batch(volumes)
    scores = []
    with torch.no_grad():
        for start in range(0, len(pairs), _PAIRS_PER_BATCH):
            first, second = zip(*pairs[start : start + _PAIRS_PER_BATCH])
            scores.append(metric(batch[list(first)], batch[list(second)]).flatten().double().cpu())
    return torch.cat(scores).numpy()


class Spread(NamedTuple):
    """Mean and standard deviation of a set of scores."""

    mean: float
    std: float


class Diversity(NamedTuple):
    """Pairwise MS-SSIM among the ``synthetic`` and among the ``real`` volumes (lower = more diverse)."""

    synthetic: Spread
    real: Spread


def diversity(
    synthetic: Sequence[torch.Tensor],
    real: Sequence[torch.Tensor],
    data_range: float = 2.0,
    max_pairs: int | None = None,
    seed: int = 0,
) -> Diversity:
    """:func:`pairwise_ms_ssim` within each set, summarised; the two sets may differ in shape and size."""

    def spread(volumes: Sequence[torch.Tensor]) -> Spread:
        scores = pairwise_ms_ssim(volumes, data_range=data_range, max_pairs=max_pairs, seed=seed)
        return Spread(float(scores.mean()), float(scores.std()))

    return Diversity(spread(synthetic), spread(real))
