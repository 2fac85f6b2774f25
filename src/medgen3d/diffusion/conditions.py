"""Slice conditions of the Multi-Condition Diffusion Probabilistic Model (MedGen3D Sec. 3.1, Fig. 2).

A subsequence is ``m`` consecutive mask slices, held as ``(B, m, K, H, W)``: ``K`` one-hot channels per slice with
values in [-1, 1]. A per-slice indicator ``(B, m)`` marks the conditional slices ``X^C``: the first ``n`` slices
(forward expansion), the last ``n`` (backward expansion) or none (unconditional generation). The network sees
the clean slice where the indicator is 1 and the noisy ``x_t`` elsewhere, then the indicator itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import torch
import torch.nn.functional as F

__all__ = [
    "ConditionMode",
    "condition_indicator",
    "draw_indicators",
    "one_hot_slices",
    "decode_slices",
    "pack",
    "unpack",
]


class ConditionMode(StrEnum):
    """Which slices of a subsequence are given: the first ``n``, the last ``n``, or none."""

    FORWARD = "forward"
    BACKWARD = "backward"
    UNCONDITIONAL = "unconditional"


def condition_indicator(mode: ConditionMode | str, num_known: int, length: int) -> torch.Tensor:
    """The ``(length,)`` float indicator for one subsequence: 1 on the ``num_known`` given slices.

    ``FORWARD`` gives the first slices (the subsequence extends a volume upwards), ``BACKWARD`` the last.
    """
    mode = ConditionMode(mode)
    indicator = torch.zeros(length)
    if mode is ConditionMode.UNCONDITIONAL:
        return indicator
    if not 1 <= num_known <= length - 1:
        raise ValueError(f"num_known must be in [1, {length - 1}] for {mode} conditioning, got {num_known}")
    if mode is ConditionMode.FORWARD:
        indicator[:num_known] = 1.0
    else:
        indicator[length - num_known :] = 1.0
    return indicator


def draw_indicators(
    batch: int,
    length: int,
    probabilities: Mapping[str, float],
    num_known: tuple[int, int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random training indicators ``(batch, length)``: a condition mode per item, then a number of given slices.

    Args:
        batch: number of subsequences.
        length: ``m``.
        probabilities: ``{"forward": p_F, "backward": p_B, "unconditional": p_U}`` (normalised here).
        num_known: inclusive range ``(n_min, n_max)`` of given slices in the conditional modes; expansion uses
            ``n_min``, and the windows at the ends of a volume need up to ``m - 1``.
        generator: random source.
    """
    modes = [ConditionMode(k) for k in probabilities]
    weights = torch.tensor([float(probabilities[m]) for m in modes])
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"condition probabilities must be non-negative and not all zero, got {dict(probabilities)}")
    low, high = num_known
    if not 1 <= low <= high <= length - 1:
        raise ValueError(f"num_known must satisfy 1 <= min <= max <= {length - 1}, got {num_known}")
    choice = torch.multinomial(weights / weights.sum(), batch, replacement=True, generator=generator)
    counts = torch.randint(low, high + 1, (batch,), generator=generator)
    return torch.stack([condition_indicator(modes[c], int(n), length) for c, n in zip(choice, counts)])


def one_hot_slices(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer slices ``(B, m, H, W)`` -> one-hot ``(B, m, K, H, W)`` with values -1 and 1."""
    one_hot = F.one_hot(labels.long(), num_classes).permute(0, 1, 4, 2, 3)
    return one_hot.float() * 2.0 - 1.0


def decode_slices(x: torch.Tensor) -> torch.Tensor:
    """One-hot-like ``(B, m, K, H, W)`` -> labels ``(B, m, H, W)`` by arg-max over ``K``."""
    return x.argmax(dim=2)


def pack(x_t: torch.Tensor, x_known: torch.Tensor, indicator: torch.Tensor) -> torch.Tensor:
    """The network input: the known slice where ``indicator`` is 1, ``x_t`` elsewhere, then the indicators.

    Args:
        x_t: ``(B, m, K, H, W)`` noisy slices.
        x_known: ``(B, m, K, H, W)`` clean slices (only those under the indicator are read).
        indicator: ``(B, m)``.

    Returns:
        ``(B, m * (K + 1), H, W)``.
    """
    b, m, k, h, w = x_t.shape
    keep = indicator.to(x_t.dtype)[:, :, None, None, None]
    slices = torch.where(keep.bool(), x_known, x_t)
    indicator_maps = keep[:, :, 0].expand(b, m, h, w)
    return torch.cat([slices.reshape(b, m * k, h, w), indicator_maps], dim=1)


def unpack(output: torch.Tensor, length: int) -> torch.Tensor:
    """Network output ``(B, m * K, H, W)`` -> ``(B, m, K, H, W)``."""
    b, mk, h, w = output.shape
    return output.reshape(b, length, mk // length, h, w)
