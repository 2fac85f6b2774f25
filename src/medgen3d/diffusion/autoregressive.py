"""Autoregressive generation of whole mask volumes from subsequences (MedGen3D Sec. 3.1, Fig. 1).

A first subsequence of ``m`` slices is generated from noise at relative position ``z / D``; the volume then grows
forward (upwards) conditioned on its last ``n`` slices and backward conditioned on its first ``n``, until all ``D``
slices exist. The window at each end of the volume is moved inwards so it never leaves ``[0, D)``; it is then
conditioned on more than ``n`` known slices (up to ``m - 1``), which the model learns when trained with
``num_known = (n, m - 1)``. Every slice is written exactly once. Completion of a partial volume is the same
expansion started from the known slices instead of a first subsequence.

A window may keep fewer than its ``m - n`` new slices (``new_per_window``): the ones nearest its given slices, the
next window starting from them. The paper keeps all of them; a model that draws a window's new slices as one average
continuation changes them little from one to the next (``metrics.convergence.step_change_rates``), and keeping one
per window puts a window's first step, which follows its given slices, between every pair of slices. It also takes
a step per slice where the paper takes one per ``m - n``, and each step may move the outline: on the brain preset at
its CPU budget the masks lost their columns but their outline drifted (mask_mcdpm's docs), so no preset sets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from medgen3d.diffusion.conditions import (
    ConditionMode,
    SubsequenceCondition,
    SubsequenceDenoiser,
    condition_indicator,
    decode_slices,
    one_hot_slices,
)
from medgen3d.diffusion.sampler import Generators, SubsequenceSampler

__all__ = ["Window", "expansion_plan", "generation_plan", "generate_volumes"]


class Window(NamedTuple):
    """One subsequence to generate: slices ``[start, start + m)``, of which ``num_known`` are given; of its new slices
    the ``num_kept`` nearest the given ones are written (``None``: all)."""

    start: int
    num_known: int
    mode: ConditionMode
    num_kept: int | None = None


def expansion_plan(
    depth: int, known: tuple[int, int], length: int, num_condition: int, new_per_window: int | None = None
) -> list[Window]:
    """Windows that grow the known slices ``[known[0], known[1])`` to the whole depth, forward then backward.

    Args:
        depth: ``D``, slices in the volume.
        known: the consecutive known slices, ``0 <= lo < hi <= D`` and ``hi - lo >= num_condition``.
        length: ``m``.
        num_condition: ``n``, known slices per window away from the ends.
        new_per_window: new slices each window writes, at most ``m - n``; ``None``: all its new slices.
    """
    lo, hi = known
    if not 1 <= num_condition <= length - 1:
        raise ValueError(f"num_condition must be in [1, {length - 1}], got {num_condition}")
    if new_per_window is not None and not 1 <= new_per_window <= length - num_condition:
        raise ValueError(f"new_per_window must be in [1, {length - num_condition}], got {new_per_window}")
    if depth < length:
        raise ValueError(f"the target depth {depth} is shallower than one subsequence ({length} slices)")
    if not (0 <= lo < hi <= depth and hi - lo >= num_condition):
        raise ValueError(f"known slices [{lo}, {hi}) must lie in [0, {depth}) and number at least {num_condition}")
    windows = []
    while lo > 0 or hi < depth:
        # forward while its window fits above the known slices, else backward; windows never straddle them
        forward_start = min(hi - num_condition, depth - length)
        backward_stop = max(lo + num_condition, length)
        if hi < depth and forward_start >= lo:
            kept = _kept(length - (hi - forward_start), new_per_window)
            windows.append(Window(forward_start, hi - forward_start, ConditionMode.FORWARD, kept))
            hi += kept
        elif lo > 0 and backward_stop <= hi:
            kept = _kept(length - (backward_stop - lo), new_per_window)
            windows.append(Window(backward_stop - length, backward_stop - lo, ConditionMode.BACKWARD, kept))
            lo -= kept
        else:
            raise ValueError(
                f"known slices [{lo}, {hi}) of a {depth}-slice volume cannot grow with {length}-slice windows: "
                "give more known slices, or a larger depth"
            )
    return windows


def _kept(new: int, new_per_window: int | None) -> int:
    """The new slices a window writes: all ``new`` of them, or ``new_per_window`` where that is fewer."""
    return new if new_per_window is None else min(new, new_per_window)


def generation_plan(
    depth: int, start: int, length: int, num_condition: int, new_per_window: int | None = None
) -> list[Window]:
    """An unconditional first window at ``start`` (all ``m`` slices written), then :func:`expansion_plan` from it."""
    if depth < length:
        raise ValueError(f"the target depth {depth} is shallower than one subsequence ({length} slices)")
    if not 0 <= start <= depth - length:
        raise ValueError(f"start must be in [0, {depth - length}] for depth {depth}, got {start}")
    first = Window(start, 0, ConditionMode.UNCONDITIONAL)
    return [first, *expansion_plan(depth, (start, start + length), length, num_condition, new_per_window)]


def _written(indicator: torch.Tensor, window: Window) -> torch.Tensor:
    """``(m,)`` bool: the slices of ``window`` it writes, its new slices (``indicator`` 0) nearest its given ones."""
    new = ~indicator.bool()
    if window.num_kept is None or window.mode == ConditionMode.UNCONDITIONAL:
        return new
    m, kept = len(new), window.num_kept
    # a forward window is given its first slices and grows upwards, a backward one its last and grows downwards
    first = window.num_known if window.mode == ConditionMode.FORWARD else m - window.num_known - kept
    nearest = torch.zeros_like(new)
    nearest[first : first + kept] = True
    return new & nearest


@torch.no_grad()
def generate_volumes(
    network: SubsequenceDenoiser,
    sampler: SubsequenceSampler,
    plans: Sequence[Sequence[Window]],
    depths: Sequence[int],
    num_classes: int,
    slice_shape: tuple[int, int],
    known: Sequence[torch.Tensor | None] | None = None,
    generator: Generators = None,
) -> list[torch.Tensor]:
    """Generate (or complete) a batch of label volumes by running each case's plan, batched window by window.

    Args:
        network: the MC-DPM denoiser.
        sampler: the subsequence sampler.
        plans: per case, its windows (from :func:`generation_plan` or :func:`expansion_plan`).
        depths: per case, ``D``.
        num_classes: ``K``.
        slice_shape: ``(H, W)`` the network works at.
        known: per case, an optional ``(D, H, W)`` label volume holding the known slices (for completion).
        generator: random source: one for the batch, or one per case (then a case's volume does not depend on
            which other cases share its batch, up to floating point).

    Returns:
        Per case, the ``(D, H, W)`` int64 label volume.
    """
    device = next(iter(network.parameters())).device if isinstance(network, torch.nn.Module) else torch.device("cpu")
    m = network.subsequence_length
    volumes = []
    for i, depth in enumerate(depths):
        volume = torch.full((depth, *slice_shape), -1, dtype=torch.long, device=device)
        if known is not None and known[i] is not None:
            volume.copy_(known[i])
        volumes.append(volume)
    for step in range(max(len(p) for p in plans)):
        cases = [i for i, plan in enumerate(plans) if step < len(plan)]
        windows = [plans[i][step] for i in cases]
        # 1. the known slices of each window, re-encoded one-hot from the labels generated so far
        slices = torch.stack([volumes[i][w.start : w.start + m] for i, w in zip(cases, windows)])
        condition = SubsequenceCondition(
            known=one_hot_slices(slices.clamp(min=0), num_classes),
            indicator=torch.stack([condition_indicator(w.mode, w.num_known, m) for w in windows]).to(device),
            position=torch.tensor([w.start / depths[i] for i, w in zip(cases, windows)], device=device),
        )
        # 2. generate the window, 3. write only its new slices
        step_generator = (
            generator if isinstance(generator, (torch.Generator, type(None))) else [generator[i] for i in cases]
        )
        labels = decode_slices(sampler.sample(network, condition, step_generator))
        for row, (i, w) in enumerate(zip(cases, windows)):
            new = _written(condition.indicator[row], w)
            volumes[i][w.start : w.start + m][new] = labels[row][new]
    for i, volume in enumerate(volumes):
        if (volume < 0).any():
            raise RuntimeError(f"case {i}: the plan left {(volume[:, 0, 0] < 0).sum().item()} slices ungenerated")
    return volumes
