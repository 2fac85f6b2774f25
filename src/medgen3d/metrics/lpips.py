"""Diversity as MedGen3D reports it beside FID: mean LPIPS between slices of different cases, per view (higher is
more diverse).

LPIPS needs ImageNet-trained weights, which this project cannot download, so it runs only when the user has an
LPIPS network on disk as a TorchScript file (``torch.jit.save`` of a module ``(x, y) -> distance``, inputs
``(B, 3, a, b)`` in [-1, 1], the LPIPS convention). Volumes are ``(H, W, D)`` tensors in [-1, 1].
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from medgen3d.metrics.crops import common_crop
from medgen3d.torchscript import load_torchscript
from medgen3d.views import to_view

__all__ = ["TorchScriptLPIPS", "view_lpips_diversity"]


class TorchScriptLPIPS:
    """A perceptual distance between two batches of grey slices, from a local TorchScript LPIPS module.

    Args:
        path: the TorchScript file.
        channels: input channels the module expects (grey slices are repeated to them).
        batch_size: slice pairs per call.
    """

    def __init__(self, path: str | os.PathLike, channels: int = 3, batch_size: int = 16) -> None:
        self.network = load_torchscript(path, "LPIPS network file")
        self.channels, self.batch_size = channels, batch_size

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(N, 1, h, w)`` and ``(N, 1, h, w)`` -> ``(N,)`` float64 distances."""
        if a.shape != b.shape or a.ndim != 4:
            raise ValueError(f"need two (N, 1, h, w) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        out = []
        with torch.no_grad():
            for x, y in zip(torch.split(a.float(), self.batch_size), torch.split(b.float(), self.batch_size)):
                grow = (-1, self.channels, -1, -1)
                out.append(self.network(x.expand(*grow), y.expand(*grow)).reshape(len(x), -1).mean(1).double())
        return torch.cat(out)


def view_lpips_diversity(
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    volumes: Sequence[torch.Tensor],
    views: Sequence[str] = ("axial", "coronal", "sagittal"),
    max_pairs: int = 45,
    slices_per_pair: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """Mean distance between same-position slices of two different cases, per view and averaged.

    Cases are centre-cropped to their common shape; each pair of cases (at most ``max_pairs``, drawn with ``seed``)
    contributes ``slices_per_pair`` slice positions evenly spread over the central 80% of each view's axis, where
    the anatomy is.

    Args:
        distance: ``(N, 1, h, w), (N, 1, h, w) -> (N,)``, e.g. :class:`TorchScriptLPIPS`.
        volumes: at least two ``(H, W, D)`` volumes in [-1, 1].
        views: views to slice along.
        max_pairs: case pairs at most.
        slices_per_pair: slice positions per case pair and view.
        seed: which case pairs, when there are more.

    Returns:
        ``{view: mean distance, ..., "mean": mean over views}``.
    """
    if len(volumes) < 2:
        raise ValueError(f"LPIPS diversity needs at least two volumes, got {len(volumes)}")
    cropped = [v[None] for v in common_crop([torch.as_tensor(v, dtype=torch.float32) for v in volumes])]  # (1, H, W, D)
    pairs = list(itertools.combinations(range(len(volumes)), 2))
    if max_pairs < len(pairs):
        chosen = np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False)
        pairs = [pairs[i] for i in sorted(chosen)]
    result = {}
    for view in views:
        stacks = [to_view(v, view) for v in cropped]  # (N, 1, a, b)
        n = stacks[0].shape[0]
        positions = np.unique(np.linspace(0.1 * (n - 1), 0.9 * (n - 1), slices_per_pair).round().astype(int))
        first = torch.cat([stacks[i][positions] for i, _ in pairs])
        second = torch.cat([stacks[j][positions] for _, j in pairs])
        result[view] = float(distance(first, second).mean())
    result["mean"] = float(np.mean([result[v] for v in views]))
    return result
