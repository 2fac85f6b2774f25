from __future__ import annotations

import pytest
import torch

from medgen3d.transforms import RandSubsequenced, ResizeLabelSlicesd, Subsequenced, resize_label_slices


def _volume(depth=10):
    # slice z holds the value z everywhere, so a crop tells where it came from
    return torch.arange(depth).float().expand(1, 4, 5, depth).clone()


def test_random_subsequence_is_m_consecutive_slices_with_its_relative_position():
    crop = RandSubsequenced("label", length=4)
    crop.set_random_state(0)
    starts = set()
    for _ in range(200):
        out = crop({"label": _volume(10)})
        first = int(out["label"][0, 0, 0, 0])
        assert out["label"].shape == (1, 4, 5, 4)
        assert out["label"][0, 0, 0].tolist() == [first, first + 1, first + 2, first + 3]
        assert out["position"].item() == pytest.approx(first / 10)
        assert crop.start == first
        starts.add(first)
    assert starts == set(range(7))  # every start in [0, D - m] is drawn


def test_replay_from_the_recorded_start_is_identical():
    crop = RandSubsequenced("label", length=3)
    crop.set_random_state(5)
    data = {"label": torch.rand(1, 4, 5, 9)}
    out = crop(data)
    replay = Subsequenced("label", length=3, start=crop.start)(data)
    assert torch.equal(out["label"], replay["label"]) and torch.equal(out["position"], replay["position"])


def test_volume_shallower_than_the_subsequence_is_named():
    with pytest.raises(ValueError, match=r"label: 3 slices, fewer than the subsequence length 4"):
        RandSubsequenced("label", length=4)({"label": torch.zeros(1, 4, 4, 3)})


def test_resizing_label_slices_never_invents_labels_and_keeps_structures():
    labels = torch.zeros(2, 40, 48, dtype=torch.long)
    labels[:, 10:30, 12:36] = 3  # a block of label 3 with a label-1 core; label 2 is absent
    labels[:, 16:24, 20:28] = 1
    small = resize_label_slices(labels, (20, 24), 4)
    assert small.shape == (2, 20, 24)
    assert set(small.unique().tolist()) == {0, 1, 3}
    assert (small == 3).sum() / (labels == 3).sum() == pytest.approx(0.25, rel=0.1)
    big = resize_label_slices(small, (40, 48), 4)
    assert set(big.unique().tolist()) <= {0, 1, 3}
    assert (big == labels).float().mean() > 0.95
    assert resize_label_slices(labels, (40, 48), 4) is not None and torch.equal(
        resize_label_slices(labels, (40, 48), 4), labels
    )


def test_resize_transform_works_on_channel_first_volumes():
    volume = torch.zeros(1, 32, 32, 5, dtype=torch.long)
    volume[0, 8:24, 8:24] = 2
    out = ResizeLabelSlicesd("label", (16, 16), 3)({"label": volume})["label"]
    assert out.shape == (1, 16, 16, 5)
    assert torch.equal(out[0, 4:12, 4:12], torch.full((8, 8, 5), 2))
    assert ResizeLabelSlicesd("label", None, 3)({"label": volume})["label"] is volume
