"""Adapters that let bundle tools call networks whose forward needs more than one tensor."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FixedConditionWrapper", "PackedSegmentationDenoiser", "PackedSequenceGenerator"]


class FixedConditionWrapper(nn.Module):
    """Calls ``network(x, timesteps, position)`` with a fixed timestep and position, so that single-input tools
    (``monai.bundle verify_net_in_out``) can check shapes.

    Args:
        network: an MC-DPM denoiser.
        timestep: diffusion step used for every item.
        position: relative position used for every item.
    """

    def __init__(self, network: nn.Module, timestep: int = 500, position: float = 0.5) -> None:
        super().__init__()
        self.network, self.timestep, self.position = network, timestep, position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        timesteps = torch.full((b,), self.timestep, device=x.device, dtype=torch.long)
        return self.network(x, timesteps, torch.full((b,), self.position, device=x.device))


class PackedSequenceGenerator(nn.Module):
    """Calls a sequence generator on one packed tensor, every history slot valid, and returns the slice.

    Input ``(B, (L + 1) * K + L, H, W)``: the one-hot masks of slices ``t - L .. t``, then the ``L`` previous image
    slices. Output ``(B, 1, H, W)``. For single-input tools such as ``verify_net_in_out``.
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        history, k = self.generator.history, self.generator.num_classes
        b, _, h, w = x.shape
        masks = x[:, : (history + 1) * k].reshape(b, history + 1, k, h, w)
        previous = x[:, (history + 1) * k :].reshape(b, history, 1, h, w)
        return self.generator(masks, previous, torch.ones(b, history, device=x.device)).image


class PackedSegmentationDenoiser(nn.Module):
    """Calls a SPADE diffusion UNet on one packed tensor ``(B, 1 + K, H, W)`` (the noisy image, then the one-hot
    mask) at a fixed timestep, for single-input tools such as ``verify_net_in_out``."""

    def __init__(self, network: nn.Module, timestep: int = 5) -> None:
        super().__init__()
        self.network, self.timestep = network, timestep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        timesteps = torch.full((x.shape[0],), self.timestep, device=x.device, dtype=torch.long)
        return self.network(x[:, :1], timesteps, seg=x[:, 1:])
