from __future__ import annotations

import pytest
import torch

from medgen3d.diffusion.conditions import (
    ConditionMode,
    SubsequenceCondition,
    condition_indicator,
    corrupt_condition,
    decode_slices,
    draw_condition,
    draw_indicators,
    jitter_boundaries,
    one_hot_slices,
    pack,
    unpack,
)


@pytest.mark.parametrize(
    "mode, n, expected",
    [
        ("forward", 2, [1, 1, 0, 0, 0, 0]),
        ("backward", 2, [0, 0, 0, 0, 1, 1]),
        ("forward", 5, [1, 1, 1, 1, 1, 0]),
        ("unconditional", 3, [0, 0, 0, 0, 0, 0]),
    ],
)
def test_indicator_layout_for_each_mode(mode, n, expected):
    assert condition_indicator(mode, n, 6).tolist() == expected


def test_indicator_rejects_impossible_counts():
    with pytest.raises(ValueError, match=r"num_known must be in \[1, 5\]"):
        condition_indicator(ConditionMode.FORWARD, 6, 6)


def test_pack_takes_known_slices_where_indicated_and_appends_the_indicator():
    b, m, k, h, w = 2, 4, 3, 5, 6
    x_t, x_known = torch.randn(b, m, k, h, w), torch.randn(b, m, k, h, w)
    indicator = torch.stack([condition_indicator("forward", 1, m), condition_indicator("backward", 2, m)])
    packed = pack(x_t, SubsequenceCondition(x_known, indicator, torch.zeros(b)))
    assert packed.shape == (b, m * (k + 1), h, w)
    slices = packed[:, : m * k].reshape(b, m, k, h, w)
    for i in range(b):
        for s in range(m):
            source = x_known if indicator[i, s] else x_t
            assert torch.equal(slices[i, s], source[i, s])
    assert torch.equal(packed[:, m * k :, 2, 3], indicator)
    assert torch.equal(unpack(packed[:, : m * k], m), slices)


def test_pack_ignores_whatever_is_in_unknown_slots():
    x_known = torch.full((1, 3, 2, 4, 4), float("nan"))
    x_known[:, 0] = 1.0
    condition = SubsequenceCondition(x_known, condition_indicator("forward", 1, 3)[None], torch.zeros(1))
    packed = pack(torch.zeros(1, 3, 2, 4, 4), condition)
    assert torch.isfinite(packed).all()


def test_one_hot_round_trip():
    labels = torch.randint(0, 5, (2, 6, 8, 8))
    x = one_hot_slices(labels, 5)
    assert x.shape == (2, 6, 5, 8, 8) and set(x.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(decode_slices(x), labels)


def test_drawn_indicators_follow_the_probabilities_and_counts():
    generator = torch.Generator().manual_seed(0)
    probabilities = {"forward": 0.5, "backward": 0.3, "unconditional": 0.2}
    indicators = draw_indicators(4000, 6, probabilities, (2, 5), generator)
    first, last, none = indicators[:, 0] == 1, indicators[:, -1] == 1, indicators.sum(1) == 0
    assert abs(first.float().mean() - 0.5) < 0.03 and abs(last.float().mean() - 0.3) < 0.03
    assert abs(none.float().mean() - 0.2) < 0.03
    counts = indicators[~none].sum(1)
    assert counts.min() == 2 and counts.max() == 5
    # known slices are contiguous at one end
    for row in indicators[first][:50]:
        n = int(row.sum())
        assert row[:n].all() and not row[n:].any()
    again = draw_indicators(4000, 6, probabilities, (2, 5), torch.Generator().manual_seed(0))
    assert torch.equal(indicators, again)


def _condition():
    known = one_hot_slices(torch.randint(0, 3, (3, 4, 8, 8)), 3)
    indicator = torch.stack([condition_indicator(mode, 2, 4) for mode in ("forward", "unconditional", "backward")])
    return SubsequenceCondition(known, indicator, torch.tensor([0.1, 0.4, 0.7]))


def test_condition_selects_concatenates_and_imposes_its_slices_item_by_item():
    condition = _condition()
    assert condition.conditional.tolist() == [True, False, True]
    picked = condition.select(condition.conditional)
    assert torch.equal(picked.position, torch.tensor([0.1, 0.7])) and torch.equal(picked.known[1], condition.known[2])
    both = SubsequenceCondition.cat([condition, picked.null()])
    assert both.known.shape == (5, 4, 3, 8, 8) and torch.equal(both.position[3:], picked.position)
    assert both.conditional.tolist() == [True, False, True, False, False]
    x = torch.zeros(3, 4, 3, 8, 8)
    imposed = condition.impose(x)
    assert torch.equal(imposed[0, :2], condition.known[0, :2]) and not imposed[0, 2:].any() and not imposed[1].any()
    assert all(t.device.type == "cpu" for t in condition.to("cpu"))


class _RecordingNetwork(torch.nn.Module):
    """Records every call and predicts ``x_0 = 0.5 * slices``, so a sampler can run on it."""

    subsequence_length, num_classes = 4, 3

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), position.clone()))
        return 0.5 * x[:, : self.subsequence_length * self.num_classes]


def _assert_network_saw(call, condition):
    """The packed input of ``call`` holds the condition's given slices and indicator, and its positions."""
    x, position = call
    b, m, k = condition.known.shape[0], condition.indicator.shape[1], condition.known.shape[2]
    slices = x[:b, : m * k].reshape(b, m, k, *x.shape[2:])
    given = condition.indicator.bool()
    assert torch.equal(slices[given], condition.known[given])
    assert torch.equal(x[:b, m * k :, 0, 0], condition.indicator)
    assert torch.equal(position[:b], condition.position)


def test_one_condition_object_reaches_the_network_through_predict_sample_and_loss():
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    from medgen3d.diffusion.sampler import SubsequenceSampler
    from medgen3d.diffusion.training import mcdpm_loss

    condition, network = _condition(), _RecordingNetwork()
    sampler = SubsequenceSampler(DDIMScheduler(100, prediction_type="sample"), 3, guidance_scale=2.0)
    x_t = torch.randn(3, 4, 3, 8, 8)
    sampler.predict(network, x_t, condition, 50, torch.Generator().manual_seed(0))
    [call] = network.calls
    _assert_network_saw(call, condition)
    # the guided pass rides in the same call: the conditional items again, nothing given, same positions
    assert not call[0][3:, -4:].any() and torch.equal(call[1][3:], condition.position[condition.conditional])
    sample = sampler.sample(network, condition, torch.Generator().manual_seed(0))
    assert len(network.calls) == 1 + 3
    for call in network.calls[1:]:
        _assert_network_saw(call, condition)
    assert torch.equal(sample, condition.impose(sample)) and torch.equal(sample[0, :2], condition.known[0, :2])
    # in training the given slices come from the condition, not from x_0
    network.calls.clear()
    x_0 = one_hot_slices(torch.randint(0, 3, (3, 4, 8, 8)), 3)
    mcdpm_loss(network, DDPMScheduler(100, prediction_type="sample"), x_0, condition)
    [call] = network.calls
    _assert_network_saw(call, condition)


def test_most_conditional_items_get_the_count_generation_uses():
    probabilities = {"forward": 0.5, "backward": 0.5, "unconditional": 0.0}
    indicators = draw_indicators(4000, 6, probabilities, (2, 5), torch.Generator().manual_seed(0), p_min_known=0.75)
    counts = indicators.sum(1)
    # 0.75 exactly 2, the rest uniform over 2..5: P(2) = 0.75 + 0.25 / 4
    assert (counts == 2).float().mean().item() == pytest.approx(0.8125, abs=0.02)
    assert set(counts.unique().tolist()) == {2.0, 3.0, 4.0, 5.0}
    uniform = draw_indicators(4000, 6, probabilities, (2, 5), torch.Generator().manual_seed(0))
    assert torch.equal(uniform, draw_indicators(4000, 6, probabilities, (2, 5), torch.Generator().manual_seed(0), 0.0))
    with pytest.raises(ValueError, match="p_min_known must be in"):
        draw_indicators(4, 6, probabilities, (2, 5), p_min_known=1.5)


def test_boundary_jitter_moves_boundaries_and_keeps_interiors():
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[:, 4:12, 4:12] = 2
    jittered = jitter_boundaries(labels, 1.0, torch.Generator().manual_seed(0))
    changed = jittered != labels
    assert changed.any() and torch.equal(jittered[:, 5:11, 5:11], labels[:, 5:11, 5:11])  # interior kept
    ring = torch.zeros_like(labels, dtype=torch.bool)
    ring[:, 3:13, 3:13] = True
    ring[:, 5:11, 5:11] = False
    assert not (changed & ~ring).any()  # only pixels within one of the boundary change
    assert set(jittered.unique().tolist()) <= {0, 2} and torch.equal(jitter_boundaries(labels, 0.0), labels)


def test_condition_corruption_changes_the_given_slices_only():
    torch.manual_seed(0)
    labels = torch.zeros(4, 6, 16, 16, dtype=torch.long)
    labels[..., 3:13, 3:13] = 1
    labels[..., 6:10, 6:10] = 2
    x_0 = one_hot_slices(labels, 3)
    probabilities = {"forward": 0.5, "backward": 0.5, "unconditional": 0.0}
    condition = draw_condition(x_0, torch.rand(4), probabilities, (2, 5), torch.Generator().manual_seed(0))
    before = x_0.clone()
    corrupted = corrupt_condition(condition, 0.3, torch.Generator().manual_seed(1))
    given = condition.indicator.bool()
    assert not torch.equal(corrupted.known[given], x_0[given])  # the given slices moved
    assert torch.equal(corrupted.known[~given], x_0[~given])  # the target slices did not
    assert torch.equal(x_0, before) and corrupted.known is not x_0  # nor did the clean subsequence the loss reads
    assert ((corrupted.known == 1).sum(dim=2) == 1).all()  # still one-hot
    assert corrupt_condition(condition, 0.0) is condition
