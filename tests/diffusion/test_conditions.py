from __future__ import annotations

import pytest
import torch

from medgen3d.diffusion.conditions import (
    ConditionMode,
    condition_indicator,
    decode_slices,
    draw_indicators,
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
    packed = pack(x_t, x_known, indicator)
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
    packed = pack(torch.zeros(1, 3, 2, 4, 4), x_known, condition_indicator("forward", 1, 3)[None])
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
