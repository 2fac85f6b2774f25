"""Multi-scale patch discriminators for the image sequence generator (vid2vid's image and temporal D).

Each scale is a MONAI ``PatchDiscriminator`` applied to an average-pooled copy of the input, as in pix2pixHD and
vid2vid (MONAI's ``MultiScalePatchDiscriminator`` instead deepens the network per scale on one input). The
discriminators only return predictions and features; the trainer computes the losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import PatchDiscriminator
from torch import nn

__all__ = ["MultiScaleDiscriminator", "ImageDiscriminator", "TemporalDiscriminator"]


class MultiScaleDiscriminator(nn.Module):
    """Patch discriminators at ``num_scales`` resolutions (full, 1/2, 1/4, ...).

    Args:
        in_channels: input channels.
        num_scales: pyramid levels.
        channels: first-layer channels of each patch discriminator.
        num_layers: strided layers of each patch discriminator.
    """

    def __init__(self, in_channels: int, num_scales: int = 2, channels: int = 32, num_layers: int = 3) -> None:
        super().__init__()
        self.scales = nn.ModuleList(
            PatchDiscriminator(
                spatial_dims=2, channels=channels, in_channels=in_channels, num_layers_d=num_layers, norm="INSTANCE"
            )
            for _ in range(num_scales)
        )

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """``x`` ``(B, C, H, W)`` -> per scale, the list of intermediate features with the logits last."""
        outputs = []
        for i, discriminator in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(discriminator(x))
        return outputs


class ImageDiscriminator(MultiScaleDiscriminator):
    """Judges single slices given their mask: input is the one-hot mask ``(B, K, H, W)`` and image ``(B, 1, H, W)``."""

    def __init__(self, num_classes: int, num_scales: int = 2, channels: int = 32, num_layers: int = 3) -> None:
        super().__init__(num_classes + 1, num_scales, channels, num_layers)

    def forward(self, mask: torch.Tensor, image: torch.Tensor) -> list[list[torch.Tensor]]:  # type: ignore[override]
        return super().forward(torch.cat([mask, image], dim=1))


class TemporalDiscriminator(MultiScaleDiscriminator):
    """Judges runs of ``num_frames`` consecutive slices with the flows between them.

    Input: ``frames`` ``(B, F, H, W)`` and ``flows`` ``(B, 2 * (F - 1), H, W)``; both real and generated runs are
    given the same flows, so the discriminator judges how the slices change, conditioned on the motion.
    """

    def __init__(self, num_frames: int = 3, num_scales: int = 2, channels: int = 32, num_layers: int = 3) -> None:
        super().__init__(num_frames + 2 * (num_frames - 1), num_scales, channels, num_layers)
        self.num_frames = num_frames

    def forward(self, frames: torch.Tensor, flows: torch.Tensor) -> list[list[torch.Tensor]]:  # type: ignore[override]
        return super().forward(torch.cat([frames, flows], dim=1))
