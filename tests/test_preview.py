from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from medgen3d.preview import display_window, label_colormap, preview_dataset


def test_preview_writes_one_montage_per_case_with_a_coloured_overlay(tiny_dataset, tmp_path):
    paths = preview_dataset(tiny_dataset.root, tmp_path / "png", max_cases=2)
    assert [p.name for p in paths] == ["case-0.png", "case-1.png"]
    pixels = mpimg.imread(paths[0])[..., :3]
    height = pixels.shape[0]
    # top row: grey image only (R == G == B); the bottom row carries the coloured label overlay
    top, bottom = pixels[: height // 2], pixels[height // 2 :]
    chroma = lambda p: (p.max(-1) - p.min(-1)) > 0.1  # noqa: E731
    assert chroma(bottom).mean() > 5 * max(chroma(top).mean(), 1e-4)
    overlay_colour = np.array(label_colormap(4)(1)[:3])
    assert (np.abs(bottom - overlay_colour * 0.45).sum(-1) < 0.35).any()  # label 1 blended over dark background


def test_default_folder_and_split_selection(tiny_dataset):
    paths = preview_dataset(tiny_dataset.root, split="test")
    assert paths == [tiny_dataset.root / "previews" / "case-4.png"]
    with pytest.raises(ValueError, match="split must be"):
        preview_dataset(tiny_dataset.root, split="train")


def test_display_window():
    assert display_window(np.zeros(3), "CT") == (-1000.0, 400.0)
    low, high = display_window(np.arange(101.0), "MR")
    assert (low, high) == (1.0, 99.0)
