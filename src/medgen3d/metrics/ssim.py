"""3D SSIM of one volume against many, with each volume's own local statistics computed once.

MONAI's ``SSIMMetric`` blurs five maps per pair (``x``, ``y``, ``x²``, ``y²``, ``xy``) with a full ``k³`` Gaussian.
A nearest-neighbour search compares every query with every reference, so four of those five blurs are the same
for every pair a volume is in; only ``xy`` is new. :class:`LocalMoments` keeps a volume's blurred ``x`` and ``x²``,
and :func:`ssim_against` blurs only the products, with the Gaussian applied as three 1-D passes. The values are
MONAI's (same window, constants and valid-region mean) to float rounding; a search over 40 cases is about 3.5 times
faster on a CPU.

Volumes are ``(H, W, D)`` float tensors with non-negative intensities (SSIM's luminance term assumes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["gaussian_window", "local_mean", "LocalMoments", "local_moments", "ssim_against"]


def gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    """The normalised 1-D Gaussian of MONAI's SSIM: ``(size,)``."""
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def local_mean(volumes: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted local means over the valid region (no padding, as MONAI's SSIM).

    Args:
        volumes: ``(N, H, W, D)``.
        window: ``(k,)`` from :func:`gaussian_window`.

    Returns:
        ``(N, H-k+1, W-k+1, D-k+1)``.
    """
    k = window.numel()
    out = volumes[:, None]
    for shape in ((k, 1, 1), (1, k, 1), (1, 1, k)):  # the 3-D Gaussian is the product of three 1-D ones
        out = F.conv3d(out, window.to(out).view(1, 1, *shape))
    return out[:, 0]


class LocalMoments(NamedTuple):
    """A volume with its Gaussian local mean and local mean of squares (valid region)."""

    volume: torch.Tensor
    mean: torch.Tensor
    mean_of_squares: torch.Tensor


def local_moments(volume: torch.Tensor, window: torch.Tensor) -> LocalMoments:
    """:class:`LocalMoments` of an ``(H, W, D)`` volume."""
    volume = torch.as_tensor(volume, dtype=torch.float32)
    both = local_mean(torch.stack([volume, volume * volume]), window)
    return LocalMoments(volume, both[0], both[1])


def _crop(x: torch.Tensor, starts: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    return x[..., starts[0] : starts[0] + shape[0], starts[1] : starts[1] + shape[1], starts[2] : starts[2] + shape[2]]


def ssim_against(
    query: LocalMoments,
    references: Sequence[LocalMoments],
    query_start: Sequence[int],
    reference_starts: Sequence[Sequence[int]],
    shape: Sequence[int],
    window: torch.Tensor,
    data_range: float,
) -> torch.Tensor:
    """3D SSIM of the ``shape`` block of ``query`` at ``query_start`` with the same-size block of each reference.

    A valid-region local mean of a block is the block of the whole volume's local mean (the window never reaches
    past the block), so the moments are cropped rather than recomputed.

    Args:
        query: the query's moments, from :func:`local_moments` with ``window``.
        references: the references' moments, same ``window``.
        query_start: where the block starts in the query.
        reference_starts: where it starts in each reference.
        shape: the block's size; every side at least ``len(window)``.
        window: the Gaussian window.
        data_range: width of the intensity range (sets SSIM's stability constants, as MONAI's ``SSIMMetric``).

    Returns:
        ``(len(references),)`` mean SSIM per reference.
    """
    k = window.numel()
    inner = [s - k + 1 for s in shape]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    x = _crop(query.volume, query_start, shape)
    mu_x = _crop(query.mean, query_start, inner)
    var_x = _crop(query.mean_of_squares, query_start, inner) - mu_x * mu_x
    ys = torch.stack([_crop(r.volume, s, shape) for r, s in zip(references, reference_starts)])
    mu_y = torch.stack([_crop(r.mean, s, inner) for r, s in zip(references, reference_starts)])
    var_y = torch.stack([_crop(r.mean_of_squares, s, inner) for r, s in zip(references, reference_starts)])
    var_y -= mu_y * mu_y
    covariance = local_mean(ys * x, window) - mu_x * mu_y
    contrast = (2 * covariance + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return (luminance * contrast).flatten(1).mean(1)
