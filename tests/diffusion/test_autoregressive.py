from __future__ import annotations

import itertools

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from medgen3d.diffusion.autoregressive import expansion_plan, generate_volumes, generation_plan
from medgen3d.diffusion.sampler import SubsequenceSampler
from tests.conftest import random_mcdpm


def _written_slices(w, m):
    """The slices of window ``w`` it writes: its new ones, or the ``num_kept`` of them next to its given ones."""
    if w.mode == "unconditional":
        return list(range(m))
    new = list(range(w.num_known, m)) if w.mode == "forward" else list(range(m - w.num_known))
    if w.num_kept is None:
        return new
    return new[: w.num_kept] if w.mode == "forward" else new[len(new) - w.num_kept :]


def _coverage(depth, windows, m, known=None):
    writes = torch.zeros(depth, dtype=torch.long)
    if known is not None:
        writes[known[0] : known[1]] = 1
    for w in windows:
        window_known = torch.zeros(m, dtype=torch.bool)
        if w.mode == "forward":
            window_known[: w.num_known] = True
        elif w.mode == "backward":
            window_known[m - w.num_known :] = True
        # every known slice of a window must already exist
        assert (writes[w.start : w.start + m][window_known] == 1).all()
        assert 0 <= w.start and w.start + m <= depth
        assert w.mode == "unconditional" or 1 <= w.num_known <= m - 1
        writes[w.start + torch.tensor(_written_slices(w, m))] += 1
    return writes


@pytest.mark.parametrize(
    "m, n, kept",
    [(6, 2, None), (6, 1, None), (6, 5, None), (3, 1, None), (4, 3, None)]
    + [(6, 2, 1), (6, 2, 3), (4, 2, 1), (3, 1, 1)],
)
def test_expansion_writes_every_slice_exactly_once_from_any_start(m, n, kept):
    for depth in range(m, 40):
        for start in range(depth - m + 1):
            windows = generation_plan(depth, start, m, n, kept)
            assert _coverage(depth, windows, m).tolist() == [1] * depth, (depth, start)
            # away from the ends every window keeps exactly n known slices, and writes ``kept`` new ones
            inner = [w for w in windows[1:] if 0 < w.start < depth - m]
            assert all(w.num_known == n and w.num_kept == (kept or m - n) for w in inner)
    # keeping one new slice per window takes a window per slice
    assert len(generation_plan(30, 10, 4, 2, 1)) == 1 + 30 - 4
    with pytest.raises(ValueError, match=r"new_per_window must be in \[1, 2\]"):
        generation_plan(30, 10, 4, 2, 3)


class _SliceIndex(torch.nn.Module):
    """An x_0 model whose every window holds label ``j + 1`` on its slice ``j``: a volume then shows, slice by slice,
    where in its window each slice was written."""

    def __init__(self, m: int, num_classes: int) -> None:
        super().__init__()
        self.subsequence_length, self.num_classes = m, num_classes
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        b, m, (h, w) = x.shape[0], self.subsequence_length, x.shape[-2:]
        labels = torch.arange(1, m + 1).view(1, m, 1, 1).expand(b, m, h, w)
        return (
            torch.nn.functional.one_hot(labels, self.num_classes)
            .permute(0, 1, 4, 2, 3)
            .float()
            .mul(2)
            .sub(1)
            .reshape(b, -1, h, w)
        )


@pytest.mark.parametrize("kept", [None, 1, 2])
def test_each_window_writes_the_new_slices_next_to_its_given_ones(kept):
    m, depth = 4, 15
    plan = generation_plan(depth, 6, m, 2, kept)
    [volume] = generate_volumes(_SliceIndex(m, m + 1), _sampler(), [plan], [depth], m + 1, (2, 2))
    expected = torch.zeros(depth, dtype=torch.long)
    for w in plan:
        for j in _written_slices(w, m):
            expected[w.start + j] = j + 1
    assert torch.equal(volume[:, 0, 0], expected)
    if kept == 1:  # forward windows write their slice 2, next to the 2 given; backward ones their slice 1
        assert volume[12, 0, 0] == 3 and volume[3, 0, 0] == 2


def test_completion_plan_grows_a_partial_volume_without_touching_it():
    for depth, lo, hi in itertools.product([6, 7, 10, 17], range(0, 12), range(2, 17)):
        if hi > depth or hi - lo < 2:
            continue
        try:
            windows = expansion_plan(depth, (lo, hi), 6, 2)
        except ValueError as err:
            # only a volume shorter than two windows can leave known slices no room on either side
            assert "cannot grow" in str(err) and depth < 12
            continue
        assert _coverage(depth, windows, 6, known=(lo, hi)).tolist() == [1] * depth


@pytest.mark.parametrize(
    "args, message",
    [
        ((5, 0, 6, 2), "shallower than one subsequence"),
        ((10, 5, 6, 2), r"start must be in \[0, 4\]"),
        ((10, 0, 6, 6), r"num_condition must be in \[1, 5\]"),
    ],
)
def test_impossible_plans_are_rejected(args, message):
    with pytest.raises(ValueError, match=message):
        generation_plan(*args)


@pytest.fixture
def tiny_network():
    return random_mcdpm(3, 4)


def _sampler(scale=1.0):
    return SubsequenceSampler(DDIMScheduler(100, prediction_type="sample"), num_inference_steps=5, guidance_scale=scale)


def test_generated_volumes_have_the_target_depth_labels_and_are_reproducible(tiny_network):
    plans = [generation_plan(13, 4, 4, 2), generation_plan(9, 0, 4, 1)]
    run = lambda seed: generate_volumes(  # noqa: E731
        tiny_network, _sampler(2.0), plans, [13, 9], 3, (8, 8), generator=torch.Generator().manual_seed(seed)
    )
    a, b, c = run(0), run(0), run(1)
    assert [v.shape for v in a] == [(13, 8, 8), (9, 8, 8)]
    assert all(v.min() >= 0 and v.max() <= 2 for v in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_completion_keeps_the_known_slices(tiny_network):
    known = torch.full((12, 8, 8), -1, dtype=torch.long)
    known[5:8] = torch.randint(0, 3, (3, 8, 8))
    plan = expansion_plan(12, (5, 8), 4, 2)
    [volume] = generate_volumes(tiny_network, _sampler(1.5), [plan], [12], 3, (8, 8), known=[known])
    assert torch.equal(volume[5:8], known[5:8])
    assert volume.min() >= 0
