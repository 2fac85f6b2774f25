"""The Multi-Condition Diffusion UNet of MedGen3D's mask generator (paper Sec. 3.1, Fig. 2).

A 2D :class:`monai.networks.nets.DiffusionModelUNet` that sees a subsequence of ``m`` consecutive mask slices as
channels. Each slice is ``K`` one-hot channels in [-1, 1] (the clean slice where it is a condition, the noisy
``x_t`` where it is generated), followed by ``m`` binary indicator channels, one per slice (1 = condition). The
relative position ``z / D`` of the subsequence is encoded like a timestep and conditions every residual block
through the time embedding, in one of two ways (``position_mode``):

- ``"concat"`` (the paper): the sinusoidal codes of ``t`` and ``z / D`` are concatenated and go through one MLP,
  so the embedding can mix the two (what a slice looks like at a position depends on the noise level);
- ``"add"``: each code has its own MLP and the two embeddings are summed (MONAI's class-embedding branch).

With ``coordinates`` the network also sees where in the slice each pixel lies: two channels, the row and the column
scaled to [-1, 1], appended to its input. Convolutions are blind to absolute position, and in a registered dataset
(brain-mni is in MNI space) where a structure lies is half of what it is: the deep grey nuclei sit either side of
the midline, never across it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

__all__ = [
    "PositionEmbedding",
    "JointTimePositionEmbedding",
    "MultiConditionDiffusionUNet",
    "POSITION_MODES",
    "coordinate_channels",
]

POSITION_MODES = ("concat", "add")

# Positions live in [0, 1]; scaled like timesteps so the sinusoids of period up to 10000 still vary over them.
POSITION_SCALE = 1000.0


class PositionEmbedding(nn.Module):
    """Embeds a continuous relative position ``z / D`` in [0, 1]: sinusoids, then a two-layer MLP.

    Args:
        sinusoid_channels: length of the sinusoidal code (the UNet's first channel count).
        embed_dim: output size (the UNet's time-embedding size).
    """

    def __init__(self, sinusoid_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.sinusoid_channels = sinusoid_channels
        self.mlp = nn.Sequential(nn.Linear(sinusoid_channels, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, position: torch.Tensor) -> torch.Tensor:
        """``position`` ``(B,)`` float -> ``(B, embed_dim)``."""
        code = position_code(position, self.sinusoid_channels)
        return self.mlp(code.to(self.mlp[0].weight.dtype))


def position_code(position: torch.Tensor, channels: int) -> torch.Tensor:
    """``(B,)`` positions in [0, 1] -> ``(B, channels)`` sinusoids."""
    return get_timestep_embedding(position.float() * POSITION_SCALE, channels)


def coordinate_channels(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, 2, H, W)``: each pixel's row and column, scaled to [-1, 1] (pixel centres), in
    ``x``'s dtype and device."""
    b, _, h, w = x.shape
    rows = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device, dtype=x.dtype)
    columns = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(rows, columns, indexing="ij"))  # (2, H, W)
    return grid.expand(b, -1, -1, -1)


class JointTimePositionEmbedding(nn.Module):
    """The time embedding of ``"concat"`` mode: ``MLP([code(t), code(z / D)])``.

    MONAI's UNet computes its time embedding from the timestep code alone, so the position code of the current
    call is set on this module (:attr:`position`) by :meth:`MultiConditionDiffusionUNet.forward` just before.

    Args:
        sinusoid_channels: length of each sinusoidal code (the UNet's first channel count).
        embed_dim: output size (the UNet's time-embedding size).
    """

    def __init__(self, sinusoid_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * sinusoid_channels, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.position: torch.Tensor | None = None

    def forward(self, time_code: torch.Tensor) -> torch.Tensor:
        """``time_code`` ``(B, C)`` -> ``(B, embed_dim)``, with the position code set for this call."""
        if self.position is None:
            raise RuntimeError("the position code must be set before the time embedding is computed")
        return self.mlp(torch.cat([time_code, self.position.to(time_code.dtype)], dim=1))


class MultiConditionDiffusionUNet(DiffusionModelUNet):
    """Denoiser for ``m``-slice mask subsequences with slice conditions and a relative position.

    Input ``(B, m * (K + 1), H, W)``: ``m`` groups of ``K`` one-hot channels, then ``m`` indicator channels.
    Output ``(B, m * K, H, W)``: the prediction (noise, ``x_0`` or velocity, as trained) for every slice.
    ``H`` and ``W`` must be divisible by ``2 ** (len(channels) - 1)``.

    Args:
        num_classes: ``K``, the number of label values including background.
        subsequence_length: ``m``, slices per subsequence.
        channels: feature channels per UNet level; each a multiple of ``norm_num_groups``.
        attention_levels: self-attention per level.
        num_res_blocks: residual blocks per level.
        norm_num_groups: group-norm groups.
        num_head_channels: channels per attention head.
        position_mode: how the position joins the time embedding, ``"concat"`` or ``"add"`` (see the module).
        coordinates: append the in-plane coordinate channels to the input (see the module); the input the caller
            passes is the same either way.
    """

    def __init__(
        self,
        num_classes: int,
        subsequence_length: int = 6,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True),
        num_res_blocks: Sequence[int] | int = 1,
        norm_num_groups: int = 16,
        num_head_channels: int | Sequence[int] = 32,
        position_mode: str = "add",
        coordinates: bool = False,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (background and one structure), got {num_classes}")
        if subsequence_length < 2:
            raise ValueError(f"subsequence_length must be at least 2, got {subsequence_length}")
        if position_mode not in POSITION_MODES:
            raise ValueError(f"position_mode must be one of {POSITION_MODES}, got {position_mode!r}")
        # in "add" mode, num_class_embeds=1 switches on MONAI's "add a class embedding to the time embedding"
        # branch; the embedding itself is replaced by the continuous position embedding below.
        super().__init__(
            spatial_dims=2,
            in_channels=subsequence_length * (num_classes + 1) + (2 if coordinates else 0),
            out_channels=subsequence_length * num_classes,
            num_res_blocks=num_res_blocks,
            channels=channels,
            attention_levels=attention_levels,
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            num_class_embeds=1 if position_mode == "add" else None,
        )
        self.num_classes = num_classes
        self.subsequence_length = subsequence_length
        self.position_mode = position_mode
        self.coordinates = coordinates
        # every level but the last halves the slice: both sides must be multiples of this
        self.size_multiple = 2 ** (len(channels) - 1)
        if position_mode == "add":
            self.class_embedding = PositionEmbedding(channels[0], channels[0] * 4)
        else:
            self.time_embed = JointTimePositionEmbedding(channels[0], channels[0] * 4)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, timesteps: torch.Tensor, position: torch.Tensor
    ) -> torch.Tensor:
        """Predict for every slice of the subsequence.

        Args:
            x: ``(B, m * (K + 1), H, W)`` packed slices and indicators (see :mod:`medgen3d.diffusion.conditions`).
            timesteps: ``(B,)`` diffusion steps.
            position: ``(B,)`` relative position ``z / D`` of the first slice.

        Returns:
            ``(B, m * K, H, W)``.
        """
        if self.coordinates:
            x = torch.cat([x, coordinate_channels(x)], dim=1)
        if self.position_mode == "add":
            return super().forward(x, timesteps, class_labels=position)
        self.time_embed.position = position_code(position, self.block_out_channels[0])
        try:
            return super().forward(x, timesteps)
        finally:
            self.time_embed.position = None
