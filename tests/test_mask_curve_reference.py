"""benchmarks/mask_stage's working-size reference: the real masks resized to the network's slice size and back, the
ceiling of the mask stage's learning curve, and its row in the curve's table; which kept curve scores count; and the
lookup alignment of generated masks."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _mask() -> np.ndarray:
    """``(40, 48, 6)``: a block of label 1 crossed by a one-voxel line of label 2."""
    mask = np.zeros((40, 48, 6), dtype=np.int64)
    mask[8:32, 8:40] = 1
    mask[20, 8:40] = 2
    return mask


def test_same_size_is_unchanged() -> None:
    from mask_stage import resized_and_back

    mask = _mask()
    np.testing.assert_array_equal(resized_and_back(mask, (40, 48), 3), mask)


def test_half_size_loses_thin_structures_and_keeps_blocks() -> None:
    from mask_stage import resized_and_back

    mask = _mask()
    back = resized_and_back(mask, (20, 24), 3)
    assert back.shape == mask.shape
    assert set(np.unique(back)) <= {0, 1, 2}  # no invented labels
    assert (back == 2).sum() < (mask == 2).sum()  # the one-voxel line does not survive whole at half size
    # the block away from its edges and from the line keeps its label
    assert (back[12:19, 12:36] == 1).all() and (back[22:28, 12:36] == 1).all()


def _structure(fraction: float, gap: float | None) -> dict[str, Any]:
    entry = {
        "presence_rate": 1.0,
        "presence_rate_real": 1.0,
        "fraction_real": 0.03,
        "fraction_synthetic": fraction,
        "components_real": 100.0,
        "components_synthetic": 50.0,
        "continuity_real": 0.44,
        "continuity_synthetic": 0.6,
        "z_profile_correlation": 0.95,
    }
    return entry | ({} if gap is None else {"seed_agreement_gap": gap})


def _point(iterations: int) -> dict[str, Any]:
    return {
        "iterations": iterations,
        "slice_change_rate": {"synthetic": 0.15, "real": 0.2},
        "outline_pieces": {"synthetic": 1.6, "real": 1.4},
        "outline_specks": {"synthetic": 0.37, "real": 0.09},
        "lookup_alignment": {"mean": 0.656, "structures": {"csf": 0.656}},
        "structures": {"csf": _structure(0.02, 0.05)},
    }


def test_curve_table_has_the_reference_row() -> None:
    from mask_stage import _curve_markdown

    reference = {
        "slice_size": [64, 80],
        "slice_change_rate": {"synthetic": 0.19, "real": 0.2},
        "outline_pieces": {"synthetic": 1.4, "real": 1.4},
        "structures": {"csf": _structure(0.022, None)},
    }
    results = {
        "dataset": "brain-mni",
        "budget": 1400,
        "sampler": "scoring",
        "training": {"machine": "test", "seconds_at": {"1400": 10.0}},
        "points": [_point(1400)],
        "working_size": reference,
    }
    text = _curve_markdown(results)
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    names = [r.split(" | ")[0] for r in rows]
    assert names == ["| real", "| `real masks at 64x80 and back`", "| `defaults, 1400 iterations`"]
    assert rows[1].rstrip(" |").endswith("1.00 / 0.022 / 50.0 / 0.60 / 0.95 / n/a")  # no seed gap: not sampled
    assert rows[0].split(" | ")[4] == "1.40 (0.09)"  # the real outline pieces and specks, from the point
    assert rows[1].split(" | ")[4] == "1.40 (n/a)"  # the reference was measured before the specks
    assert rows[2].split(" | ")[4] == "1.60 (0.37)"
    assert [r.split(" | ")[6] for r in rows] == ["–", "n/a", "0.656"]  # the lookup alignment, measured on samples
    assert "Training machine: test." in text  # the reference row names no machine
    assert "what a model that learnt the real masks perfectly at that size would score" in text
    del results["working_size"]  # curves written before the reference
    assert "and back" not in _curve_markdown(results)


def test_kept_curve_scores_count_only_for_their_sampler() -> None:
    from mask_stage import scored_with

    preset = {"num_inference_steps": 5, "guidance_scale": 0.25, "new_slices_per_window": 2}
    assert scored_with({"sampler": preset}, preset, pinned=False)
    assert not scored_with({"sampler": preset | {"num_inference_steps": 3}}, preset, pinned=False)  # config changed
    assert not scored_with({}, preset, pinned=False)  # drawn before records named their sampler: score again
    assert scored_with({}, preset, pinned=True)  # the pinned sampler is this file's own
    assert not scored_with(None, preset, pinned=True)


def test_lookup_alignment_is_1_for_a_segmenter_that_reads_the_lookup_and_0_for_one_that_sees_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mask_stage

    from medgen3d.metrics.lookup import lookup_images

    (tmp_path / "brain-mni" / "models" / "segmenter").mkdir(parents=True)
    (tmp_path / "brain-mni" / "models" / "segmenter" / "model.pt").touch()
    monkeypatch.setattr(mask_stage, "QUALITY", tmp_path)
    masks = [np.zeros((6, 6, 4), dtype=np.int64) for _ in range(2)]
    masks[0][1:4, 1:4] = 1
    masks[1][2:5, 2:5] = 2  # structure 3 is in neither mask: it is left out of the mean
    means = torch.tensor([-1.0, 0.2, 0.6, -0.3])
    training = SimpleNamespace(images=lookup_images(masks, means), labels=masks)
    reader = SimpleNamespace(
        training=training,
        num_classes=4,
        labels={0: "background", 1: "a", 2: "b", 3: "c"},
        segment=lambda image: (image[..., None] - means).abs().argmin(-1).numpy(),  # the nearest label mean
    )
    monkeypatch.setitem(mask_stage._JUDGES, "brain-mni", reader)
    read = mask_stage.lookup_alignment("brain-mni", masks)
    assert read["mean"] == pytest.approx(1.0)
    assert read["structures"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0), "c": None}
    blind = SimpleNamespace(**vars(reader) | {"segment": lambda image: np.zeros(image.shape, dtype=np.int64)})
    monkeypatch.setitem(mask_stage._JUDGES, "brain-mni", blind)
    assert mask_stage.lookup_alignment("brain-mni", masks)["mean"] == pytest.approx(0.0)
    monkeypatch.setattr(mask_stage, "QUALITY", tmp_path / "elsewhere")  # no segmenter trained: not measured
    assert mask_stage.lookup_alignment("brain-mni", masks) is None
