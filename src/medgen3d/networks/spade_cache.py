"""Reusing a SPADE network's mask modulation across the denoising steps of one batch.

Every SPADE normalisation (MONAI's ``SPADE``) turns the mask into a per-pixel scale and shift,
``gamma, beta = mlp_gamma(a), mlp_beta(a)`` with ``a = mlp_shared(resize(mask))``, and applies them to the
normalised features. Neither depends on the noisy image or the timestep, only on the mask and the feature size. The
refiner denoises the same slices for ``t_r`` steps with the same masks, so recomputing them at every step is wasted
work: half the network's time on a CPU for the small preset. Inside :func:`reuse_mask_modulation` each SPADE block
computes them once per mask tensor and feature size and reuses them; the network's outputs are unchanged.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from monai.networks.blocks.spade_norm import SPADE
from torch import nn

__all__ = ["reuse_mask_modulation"]


def _cached_forward(self: SPADE, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
    """MONAI's ``SPADE.forward`` with ``(gamma, beta)`` looked up before they are computed."""
    normalized = self.param_free_norm(x.contiguous())
    key = (id(segmap), tuple(x.shape[2:]))
    entry = self._modulation_cache.get(key)
    # The entry holds the mask itself: while it is alive its id cannot be given to another tensor.
    if entry is None or entry[0] is not segmap:
        actv = self.mlp_shared(F.interpolate(segmap, size=x.size()[2:], mode="nearest"))
        entry = (segmap, self.mlp_gamma(actv), self.mlp_beta(actv))
        self._modulation_cache[key] = entry
    _, gamma, beta = entry
    return normalized * (1 + gamma) + beta


@contextlib.contextmanager
def reuse_mask_modulation(network: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``network``'s SPADE blocks compute each mask's modulation once.

    Only for inference: gradients are off inside (a cached modulation would not carry the mask branch's gradient to
    a second backward pass). The caller must not change a mask tensor in place while the block is open; passing the
    same tensor object at every step is what makes the reuse happen.

    Args:
        network: any module holding MONAI ``SPADE`` blocks (e.g. ``SPADEDiffusionModelUNet``).

    Yields:
        ``network``, whose SPADE blocks are restored, and their caches emptied, on exit.
    """
    blocks = [m for m in network.modules() if isinstance(m, SPADE)]
    for block in blocks:
        block._modulation_cache = {}
        block.forward = types.MethodType(_cached_forward, block)
    try:
        with torch.no_grad():
            yield network
    finally:
        for block in blocks:
            del block.forward  # back to the class's forward
            del block._modulation_cache
