from __future__ import annotations

import numpy as np
import pytest
from monai.networks.nets import SPADEDiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

from medgen3d.data.io import DataError, load_nifti, save_nifti
from medgen3d.data.validate import validate_dataset
from medgen3d.diffusion.refiner import VIEWS, SemanticRefiner
from medgen3d.engines.checkpoint import save_atomically
from medgen3d.synthesis.refinement import load_view_networks, refine_dataset
from tests.conftest import TINY_AFFINE


def _network():
    return SPADEDiffusionModelUNet(
        2,
        1,
        1,
        label_nc=4,
        channels=(8, 16),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
        spade_intermediate_channels=8,
    ).eval()


def test_zero_steps_copy_every_image_exactly_and_pairs_keep_their_masks(tiny_dataset, tmp_path):
    refiner = SemanticRefiner(DDPMScheduler(1000), noise_steps=0)
    spec = refine_dataset(dict.fromkeys(VIEWS, _network()), refiner, tiny_dataset, tmp_path / "refined")
    validate_dataset(spec.root)
    assert spec.name == "tiny-refined" and len(spec.cases()) == 5
    for original, refined in zip(tiny_dataset.cases(), spec.cases()):
        assert np.array_equal(
            load_nifti(tiny_dataset.path(original.image)).array, load_nifti(spec.path(refined.image)).array
        )
        assert np.array_equal(
            load_nifti(tiny_dataset.path(original.label)).array, load_nifti(spec.path(refined.label)).array
        )


def test_refined_images_keep_geometry_and_scale_and_finished_cases_are_kept(tiny_dataset, tmp_path):
    refiner = SemanticRefiner(DDPMScheduler(1000), noise_steps=2, guidance_scale=1.5)
    networks = dict.fromkeys(VIEWS, _network())
    spec = refine_dataset(networks, refiner, tiny_dataset, tmp_path / "refined", batch_size=8, seed=3)
    image = load_nifti(spec.path(spec.training[0].image))
    np.testing.assert_allclose(image.affine, TINY_AFFINE)
    assert image.array.shape == (16, 16, 12) and 0 <= image.array.min() and image.array.max() <= 300.5
    first = spec.path(spec.training[0].image)
    stamp = first.stat().st_mtime_ns
    done = []
    refine_dataset(networks, refiner, tiny_dataset, tmp_path / "refined", progress=lambda d, t, c: done.append(c))
    assert first.stat().st_mtime_ns == stamp and len(done) == 5


def test_mismatched_pair_and_missing_view_checkpoint_are_named(tiny_dataset, tmp_path):
    save_nifti(tiny_dataset.path(tiny_dataset.training[0].label), np.zeros((16, 16, 10), np.uint8), TINY_AFFINE)
    refiner = SemanticRefiner(DDPMScheduler(1000), noise_steps=1)
    with pytest.raises(DataError, match=r"case-0\.nii\.gz: shape \(16, 16, 10\) differs from its image"):
        refine_dataset(dict.fromkeys(VIEWS, _network()), refiner, tiny_dataset, tmp_path / "x")
    save_atomically(_network().state_dict(), tmp_path / "models" / "axial" / "model.pt")
    with pytest.raises(DataError, match=r"coronal/model\.pt: checkpoint not found"):
        load_view_networks(_network(), tmp_path / "models", ["axial", "coronal"], "cpu")
