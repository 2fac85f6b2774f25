"""Slice conditions of the Multi-Condition Diffusion Probabilistic Model (MedGen3D Sec. 3.1, Fig. 2).

A subsequence is ``m`` consecutive mask slices, held as ``(B, m, K, H, W)``: ``K`` one-hot channels per slice with
values in [-1, 1]. A per-slice indicator ``(B, m)`` marks the conditional slices ``X^C``: the first ``n`` slices
(forward expansion), the last ``n`` (backward expansion) or none (unconditional generation). The network sees
the clean slice where the indicator is 1 and the noisy ``x_t`` elsewhere, then the indicator itself.

Everything a subsequence is conditioned on travels as one :class:`SubsequenceCondition`, through sampling and the
loss alike, and only :func:`network_prediction` takes it apart for the network: a new condition changes that object,
that function and the network, never the sampler's or the loss's signatures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F

__all__ = [
    "ConditionMode",
    "SubsequenceCondition",
    "SubsequenceDenoiser",
    "condition_indicator",
    "draw_indicators",
    "draw_condition",
    "jitter_boundaries",
    "corrupt_condition",
    "one_hot_slices",
    "decode_slices",
    "pack",
    "unpack",
    "network_prediction",
]


class ConditionMode(StrEnum):
    """Which slices of a subsequence are given: the first ``n``, the last ``n``, or none."""

    FORWARD = "forward"
    BACKWARD = "backward"
    UNCONDITIONAL = "unconditional"


class SubsequenceCondition(NamedTuple):
    """What a batch of subsequences is conditioned on.

    Attributes:
        known: ``(B, m, K, H, W)`` one-hot slices in [-1, 1]; only the slices under ``indicator`` are read, so the
            others may hold anything (the clean subsequence in training, ``-1`` placeholders in generation).
        indicator: ``(B, m)`` float, 1 on the given slices ``X^C``; an all-zero row is unconditional generation.
        position: ``(B,)`` float relative position ``z / D`` of each subsequence's first slice.
    """

    known: torch.Tensor
    indicator: torch.Tensor
    position: torch.Tensor

    @property
    def conditional(self) -> torch.Tensor:
        """``(B,)`` bool: the items with at least one given slice (guidance applies to these only)."""
        return self.indicator.any(dim=1)

    def impose(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, m, K, H, W)`` with the given slices replaced by :attr:`known`."""
        return torch.where(self.indicator.bool()[:, :, None, None, None], self.known, x)

    def null(self) -> SubsequenceCondition:
        """The null condition of classifier-free guidance: no slice given, positions kept."""
        return self._replace(indicator=torch.zeros_like(self.indicator))

    def select(self, items: torch.Tensor) -> SubsequenceCondition:
        """The items picked by a ``(B,)`` bool mask or an index tensor."""
        return SubsequenceCondition(self.known[items], self.indicator[items], self.position[items])

    @staticmethod
    def cat(conditions: Sequence[SubsequenceCondition]) -> SubsequenceCondition:
        """Conditions of several batches as one batch, in order (one network call for guided and null passes)."""
        return SubsequenceCondition(*(torch.cat(parts) for parts in zip(*conditions)))

    def to(self, device: torch.device | str) -> SubsequenceCondition:
        """The same condition on ``device``."""
        return SubsequenceCondition(*(tensor.to(device) for tensor in self))


class SubsequenceDenoiser(Protocol):
    """What sampling and training need of a network: ``(B, m(K+1), H, W), (B,), (B,) -> (B, mK, H, W)``.

    The network keeps plain tensor arguments (bundle tools call it); :func:`network_prediction` feeds it a
    :class:`SubsequenceCondition`.
    """

    subsequence_length: int

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, position: torch.Tensor) -> torch.Tensor: ...


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
    p_min_known: float = 0.0,
) -> torch.Tensor:
    """Random training indicators ``(batch, length)``: a condition mode per item, then a number of given slices.

    Args:
        batch: number of subsequences.
        length: ``m``.
        probabilities: ``{"forward": p_F, "backward": p_B, "unconditional": p_U}`` (normalised here).
        num_known: inclusive range ``(n_min, n_max)`` of given slices in the conditional modes; expansion uses
            ``n_min``, and the windows at the ends of a volume need up to ``m - 1``.
        generator: random source.
        p_min_known: probability that an item gets exactly ``n_min`` given slices; the others draw uniformly from
            the range. Every interior window of a generated volume is conditioned on ``n_min`` slices, so a uniform
            draw over 2..5 would spend three quarters of the conditional training on counts generation rarely uses.
    """
    modes = [ConditionMode(k) for k in probabilities]
    weights = torch.tensor([float(probabilities[m]) for m in modes])
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"condition probabilities must be non-negative and not all zero, got {dict(probabilities)}")
    low, high = num_known
    if not 1 <= low <= high <= length - 1:
        raise ValueError(f"num_known must satisfy 1 <= min <= max <= {length - 1}, got {num_known}")
    if not 0.0 <= p_min_known <= 1.0:
        raise ValueError(f"p_min_known must be in [0, 1], got {p_min_known}")
    choice = torch.multinomial(weights / weights.sum(), batch, replacement=True, generator=generator)
    counts = torch.randint(low, high + 1, (batch,), generator=generator)
    if p_min_known > 0:  # drawn only when used, so p_min_known 0 replays the draws of earlier versions
        counts = torch.where(torch.rand(batch, generator=generator) < p_min_known, low, counts)
    return torch.stack([condition_indicator(modes[c], int(n), length) for c, n in zip(choice, counts)])


def draw_condition(
    x_0: torch.Tensor,
    position: torch.Tensor,
    probabilities: Mapping[str, float],
    num_known: tuple[int, int],
    generator: torch.Generator | None = None,
    p_min_known: float = 0.0,
) -> SubsequenceCondition:
    """A random training condition for clean subsequences: indicators from :func:`draw_indicators`, given slices
    taken from ``x_0`` itself.

    Args:
        x_0: ``(B, m, K, H, W)`` clean one-hot subsequences in [-1, 1].
        position: ``(B,)`` relative positions ``z / D``.
        probabilities: ``{"forward": p_F, "backward": p_B, "unconditional": p_U}``.
        num_known: inclusive range of given slices in the conditional modes.
        generator: random source of the indicators (drawn on the CPU).
        p_min_known: probability of exactly ``num_known[0]`` given slices (see :func:`draw_indicators`).
    """
    b, m = x_0.shape[:2]
    indicator = draw_indicators(b, m, probabilities, num_known, generator, p_min_known).to(x_0.device)
    return SubsequenceCondition(x_0, indicator, position)


# the 8 neighbours of a pixel and the pixel itself, as (row, column) offsets
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def jitter_boundaries(labels: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Labels where each pixel takes a random neighbour's label (one of its 8, or its own) with probability
    ``rate``: boundaries move by a pixel here and there, thin structures break or thicken, interiors stay.

    Args:
        labels: ``(..., H, W)`` integer slices.
        rate: probability that a pixel is replaced by a neighbour's label.
        generator: random source (drawn on the CPU).

    Returns:
        ``(..., H, W)``, the same dtype; edges are replicated, so a pixel never takes a label from outside.
    """
    h, w = labels.shape[-2:]
    padded = F.pad(labels.reshape(-1, 1, h, w).float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    shifted = torch.stack([padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in _NEIGHBOURS], dim=1)
    which = torch.randint(0, len(_NEIGHBOURS), (shifted.shape[0], 1, h, w), generator=generator)
    replace = torch.rand(shifted.shape[0], h, w, generator=generator) < rate
    picked = shifted.gather(1, which.to(labels.device))[:, 0]
    out = torch.where(replace.to(labels.device), picked, labels.reshape(-1, h, w).float())
    return out.to(labels.dtype).reshape(labels.shape)


def corrupt_condition(
    condition: SubsequenceCondition, rate: float, generator: torch.Generator | None = None
) -> SubsequenceCondition:
    """The condition with its given slices' boundaries jittered (:func:`jitter_boundaries`); nothing else changes.

    Training gives the network real slices, generation its own output, which is never exactly real. With the
    given slices slightly wrong and the targets still real, copying the last given slice stops being the best
    answer, and the network learns to continue anatomy from an imperfect start. Sampling never calls this.

    Args:
        condition: the training condition; ``known`` ``(B, m, K, H, W)`` one-hot in [-1, 1].
        rate: :func:`jitter_boundaries`'s rate; 0 returns ``condition`` itself.
        generator: random source (drawn on the CPU).

    Returns:
        A condition whose ``known`` differs from the input only on the slices under ``indicator``.
    """
    if rate <= 0:
        return condition
    known = condition.known
    jittered = one_hot_slices(jitter_boundaries(decode_slices(known), rate, generator), known.shape[2])
    given = condition.indicator.bool()[:, :, None, None, None]
    return condition._replace(known=torch.where(given, jittered.to(known.dtype), known))


def one_hot_slices(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer slices ``(B, m, H, W)`` -> one-hot ``(B, m, K, H, W)`` with values -1 and 1."""
    one_hot = F.one_hot(labels.long(), num_classes).permute(0, 1, 4, 2, 3)
    return one_hot.float() * 2.0 - 1.0


def decode_slices(x: torch.Tensor) -> torch.Tensor:
    """One-hot-like ``(B, m, K, H, W)`` -> labels ``(B, m, H, W)`` by arg-max over ``K``."""
    return x.argmax(dim=2)


def pack(x_t: torch.Tensor, condition: SubsequenceCondition) -> torch.Tensor:
    """The network input: the given slice where the indicator is 1, ``x_t`` elsewhere, then the indicators.

    Args:
        x_t: ``(B, m, K, H, W)`` noisy slices.
        condition: the given slices and their indicator (its position goes to the network separately).

    Returns:
        ``(B, m * (K + 1), H, W)``.
    """
    b, m, k, h, w = x_t.shape
    indicator_maps = condition.indicator.to(x_t.dtype)[:, :, None, None].expand(b, m, h, w)
    return torch.cat([condition.impose(x_t).reshape(b, m * k, h, w), indicator_maps], dim=1)


def unpack(output: torch.Tensor, length: int) -> torch.Tensor:
    """Network output ``(B, m * K, H, W)`` -> ``(B, m, K, H, W)``."""
    b, mk, h, w = output.shape
    return output.reshape(b, length, mk // length, h, w)


def network_prediction(
    network: SubsequenceDenoiser, x_t: torch.Tensor, timesteps: torch.Tensor, condition: SubsequenceCondition
) -> torch.Tensor:
    """The network's output for every slice, ``(B, m, K, H, W)``: the one place a condition meets the network.

    Args:
        network: the denoiser.
        x_t: ``(B, m, K, H, W)`` noisy slices.
        timesteps: ``(B,)`` diffusion steps.
        condition: the given slices, their indicator and the positions.
    """
    return unpack(network(pack(x_t, condition), timesteps, condition.position), x_t.shape[1])
