"""The quality report on tiny datasets: how images are read, and the per-label lookup baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medgen3d.data.dataset import DatasetSpec
from medgen3d.data.intensity import CT_WINDOW, IntensityScale, reference_scale, volume_scale
from medgen3d.data.io import load_nifti, save_nifti
from medgen3d.metrics.fidelity import view_frechet_distances, view_slices
from medgen3d.metrics.lookup import label_means
from medgen3d.metrics.render import markdown_report
from medgen3d.metrics.report import load_pairs, lookup_pairs, quality_report
from tests.conftest import TINY_AFFINE, write_tiny_dataset

ALL_SPLITS = ("training", "validation", "test")


def _brighten(spec: DatasetSpec, case_index: int = 0, fraction: float = 0.01, value: float = 3000.0) -> np.ndarray:
    """Make ``fraction`` of the voxels of one case's image (all in its brightest label, 3 of the slab images'
    0/100/200/300) ``value``, far above the rest, as a generated image may have; returns the saved image."""
    case = spec.cases()[case_index]
    image = load_nifti(spec.path(case.image)).array.copy()
    bright = np.flatnonzero(image == image.max())[: int(fraction * image.size)]
    image.flat[bright] = value
    save_nifti(spec.path(case.image), image, TINY_AFFINE)
    return image


def _segment(image: torch.Tensor) -> np.ndarray:
    """A stand-in segmenter for slab images scaled by (0, 300): -1, -1/3, 1/3 and 1 (and beyond) are labels 0-3."""
    return np.clip(np.round((torch.as_tensor(image).numpy() + 1) * 1.5), 0, 3).astype(np.int64)


def _extract(slices: torch.Tensor) -> torch.Tensor:
    """A stand-in feature network: ``(N, 1, a, b)`` slices -> ``(N, 3)`` mean, spread and maximum."""
    return torch.stack([slices.mean((1, 2, 3)), slices.std((1, 2, 3)), slices.amax((1, 2, 3))], 1).double()


def test_synthetic_images_are_read_as_written_and_real_ones_by_their_own_percentiles(tmp_path: Path):
    real = write_tiny_dataset(tmp_path / "real")
    synthetic = write_tiny_dataset(tmp_path / "synthetic", (2, 0, 0))
    saved = torch.from_numpy(_brighten(synthetic))
    scale = reference_scale(real)
    assert scale == IntensityScale(0.0, 300.0)  # the slab images' 0.5 and 99.5 percentiles
    pairs = load_pairs(synthetic, ALL_SPLITS, scale)
    assert torch.equal(pairs.images[0], scale.to_network(saved.float(), clip=False))
    assert float(pairs.images[0].max()) == pytest.approx(19.0)  # 3000 on the (0, 300) scale, not clipped to 1
    assert float(pairs.images[0].min()) == -1.0
    # by its own percentiles, the bright 1% would have squeezed the rest of the image towards -1
    stretched = load_pairs(synthetic, ALL_SPLITS).images[0]
    assert float(stretched.max()) == 1.0 and float(stretched[saved == 300].max()) < -0.7
    # real data: each image by its own scale, clipped, as the networks were trained
    training = load_pairs(real, ("training",))
    for case, image in zip(real.training, training.images):
        array = load_nifti(real.path(case.image)).array
        assert torch.equal(image, volume_scale(array, "MR").to_network(torch.from_numpy(array).float()))


def test_ct_synthetic_images_are_read_with_the_window_unclipped(tmp_path: Path):
    real = write_tiny_dataset(tmp_path / "real", modality="CT")
    synthetic = write_tiny_dataset(tmp_path / "synthetic", (2, 0, 0), modality="CT")
    saved = torch.from_numpy(_brighten(synthetic))  # 3000 HU, beyond the window's 1000
    scale = reference_scale(real)
    assert scale == IntensityScale(*CT_WINDOW)
    image = load_pairs(synthetic, ALL_SPLITS, scale).images[0]
    assert torch.equal(image, scale.to_network(saved.float(), clip=False)) and float(image.max()) == 3.0
    assert float(load_pairs(synthetic, ALL_SPLITS).images[0].max()) == 1.0  # real data: the window, clipped


def test_the_lookup_renders_each_mask_with_its_labels_mean_training_intensity(tmp_path: Path):
    real = write_tiny_dataset(tmp_path / "real", (3, 1, 2))
    training, held_out = load_pairs(real, ("training",)), load_pairs(real, ("test",))
    lookup, means = lookup_pairs(training, held_out, 4)
    assert torch.equal(means, label_means(training.images, training.labels, 4))
    assert means.tolist() == pytest.approx([-1.0, -1 / 3, 1 / 3, 1.0])  # 0/100/200/300 on the (0, 300) scale
    assert lookup.ids == held_out.ids and lookup.labels is held_out.labels
    for image, label in zip(lookup.images, held_out.labels):
        assert image.shape == label.shape and torch.equal(image, means[torch.from_numpy(label)])


def test_the_report_reads_synthetic_images_as_written_and_has_the_lookup_row(tmp_path: Path):
    real = write_tiny_dataset(tmp_path / "real", (3, 1, 2))
    synthetic = write_tiny_dataset(tmp_path / "synthetic", (3, 1, 0))
    _brighten(synthetic)
    mean_absolute = lambda a, b: (a - b).abs().mean((1, 2, 3))  # noqa: E731  (a stand-in LPIPS)
    measured: list[list[np.ndarray]] = []
    seed_gap = lambda masks: measured.append(masks) or np.array([0.1, 0.2, 0.3])  # noqa: E731  (a stand-in model)
    report = quality_report(
        real.root,
        synthetic.root,
        tmp_path / "report",
        _segment,
        _extract,
        views=("axial",),
        lpips=mean_absolute,
        seed_agreement=seed_gap,
    )
    # the mask model's seed gap is measured on the real held-out masks, per structure
    held_out = load_pairs(real, ("test",)).labels
    assert len(measured) == 1 and all(np.array_equal(a, b) for a, b in zip(measured[0], held_out))
    assert report["anatomy"]["seed_agreement_gap"] == pytest.approx({"slab_1": 0.1, "slab_2": 0.2, "slab_3": 0.3})
    # read by its own percentiles the bright case would lose its labels to the stand-in segmenter; as written it
    # keeps them all
    assert report["sets"]["refined"]["alignment_dice"]["mean"] == 1.0
    lookup = report["lookup"]
    assert set(report["sets"]) == {"refined"}  # the lookup is not a synthetic set
    dice = lookup["alignment_dice"]
    assert (dice["slab_2"], dice["slab_3"], dice["mean"]) == (1.0, 1.0, 1.0)
    assert np.isnan(dice["slab_1"])  # the held-out cases' slabs are shifted past slab_1
    assert lookup["label_means"] == pytest.approx(
        {"background": -1.0, "slab_1": -1 / 3, "slab_2": 1 / 3, "slab_3": 1.0}
    )
    assert lookup["fidelity_frechet"]["axial"] >= 0 and -1 <= lookup["diversity_ms_ssim"]["mean"] <= 1
    assert "memorisation" not in lookup and set(lookup["diversity_lpips"]) == {"axial", "mean"}
    # the synthetic masks in the same lookup: the held-out segmenter reads them whole, although the synthetic images
    # of the brightened case are out of the real range
    masks_lookup = report["lookup_synthetic"]
    assert masks_lookup["alignment_dice"]["mean"] == 1.0 and "memorisation" not in masks_lookup
    # the synthetic masks, not the held-out ones, are rendered: they keep slab_1, which the held-out masks lack
    assert masks_lookup["alignment_dice"]["slab_1"] == 1.0 and set(masks_lookup["diversity_lpips"]) == {"axial", "mean"}
    text = (tmp_path / "report" / "report.md").read_text()
    # the fidelity, both diversity and the alignment tables, and the sentences saying what they are
    assert text.count("| per-label lookup (baseline) |") == 4  # with the LPIPS table
    assert text.count("| per-label lookup of the synthetic masks |") == 4
    assert "mean real training intensity" in text and "slab_3 1.000" in text and "what alignment they allow" in text
    loaded = json.loads((tmp_path / "report" / "report.json").read_text())
    assert markdown_report(loaded) == text


def test_each_set_s_features_are_extracted_once(tmp_path: Path):
    real = write_tiny_dataset(tmp_path / "real", (3, 1, 2))
    synthetic = write_tiny_dataset(tmp_path / "synthetic", (3, 1, 0))
    slices: list[int] = []
    counting = lambda batch: slices.append(len(batch)) or _extract(batch)  # noqa: E731
    report = quality_report(real.root, synthetic.root, tmp_path / "report", _segment, counting, views=("axial",))
    training, held_out = load_pairs(real, ("training",)), load_pairs(real, ("test",))
    sets = {
        "refined": load_pairs(synthetic, ALL_SPLITS, reference_scale(real)),
        "lookup": lookup_pairs(training, held_out, 4)[0],
        "lookup_synthetic": lookup_pairs(training, load_pairs(synthetic, ALL_SPLITS), 4)[0],
        "held_out": held_out,
        "training": training,
    }
    sizes = {name: sum(len(view_slices(i, "axial", 0.05)) for i in pairs.images) for name, pairs in sets.items()}
    # five sets, each extracted once, although the held-out cases are the reference of four of the five distances
    assert sum(slices) == sum(sizes.values())
    uncached = view_frechet_distances(_extract, held_out.images, training.images, ("axial",))
    assert report["reference"]["fidelity_frechet"] == pytest.approx(uncached)
