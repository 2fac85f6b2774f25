from __future__ import annotations

import numpy as np
import pytest
from monai.networks.schedulers import DDIMScheduler

from medgen3d.data.io import DataError, load_nifti, save_nifti
from medgen3d.data.validate import validate_dataset
from medgen3d.diffusion.sampler import SubsequenceSampler
from medgen3d.networks import MultiConditionDiffusionUNet
from medgen3d.synthesis.cases import Shard
from medgen3d.synthesis.masks import complete_mask_file, plan_cases, synthesise_masks
from tests.conftest import TINY_AFFINE, TINY_SHAPE, random_mcdpm, slab_label


@pytest.fixture
def network():
    return random_mcdpm(4, 4)


def _sampler():
    return SubsequenceSampler(DDIMScheduler(100, prediction_type="sample"), 4, guidance_scale=1.5)


def _synthesise(network, dataset, out, **kwargs):
    args = dict(num_cases=3, image_size=(8, 8), num_condition=2, batch_size=2, seed=7)
    args.update(kwargs)
    return synthesise_masks(network, _sampler(), dataset, out, **args)


def test_synthetic_masks_have_the_dataset_geometry_and_labels(network, tiny_dataset, tmp_path):
    spec = _synthesise(network, tiny_dataset, tmp_path / "synth")
    assert [c.case_id for c in spec.training] == ["synth-0000", "synth-0001", "synth-0002"]
    assert all(c.image is None for c in spec.training)
    summary = validate_dataset(spec.root)
    assert summary.shapes == {TINY_SHAPE}  # in-plane size restored from the network's 8 x 8
    for case in spec.training:
        volume = load_nifti(spec.path(case.label))
        np.testing.assert_allclose(volume.affine, TINY_AFFINE)
        assert volume.array.dtype == np.uint8 and volume.array.max() <= 3


def test_same_seed_same_volumes_and_resume_regenerates_only_missing_cases(network, tiny_dataset, tmp_path):
    spec = _synthesise(network, tiny_dataset, tmp_path / "a")
    again = _synthesise(network, tiny_dataset, tmp_path / "b")
    for a, b in zip(spec.training, again.training):
        assert np.array_equal(load_nifti(spec.path(a.label)).array, load_nifti(again.path(b.label)).array)
    first, second = (spec.path(c.label) for c in spec.training[:2])
    before = first.stat().st_mtime_ns
    kept = load_nifti(second).array
    second.unlink()
    _synthesise(network, tiny_dataset, tmp_path / "a")
    assert first.stat().st_mtime_ns == before  # finished cases are not redone
    # case 1 now shares its batch with no other case; its own generator makes it come out the same
    assert np.array_equal(load_nifti(second).array, kept)


def test_one_new_slice_per_window_is_recorded_and_reproducible(network, tiny_dataset, tmp_path):
    one = _synthesise(network, tiny_dataset, tmp_path / "one", new_per_window=1)
    again = _synthesise(network, tiny_dataset, tmp_path / "again", new_per_window=1)
    every = _synthesise(network, tiny_dataset, tmp_path / "every")
    volumes = [[load_nifti(s.path(c.label)).array for c in s.training] for s in (one, again, every)]
    assert all(np.array_equal(a, b) for a, b in zip(volumes[0], volumes[1]))
    # the same first window (same seed, unconditional, all of it kept), then other windows: other volumes
    assert not all(np.array_equal(a, b) for a, b in zip(volumes[0], volumes[2]))


def test_sharded_ranks_split_the_cases_and_rank_zero_writes_the_dataset(network, tiny_dataset, tmp_path):
    out = tmp_path / "sharded"
    assert _synthesise(network, tiny_dataset, out, shard=Shard(1, 2)) is None
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["synth-0001.nii.gz"]
    spec = _synthesise(network, tiny_dataset, out, shard=Shard(0, 2))
    assert len(spec.training) == 3


def test_fixed_depth_and_start_and_their_errors():
    plans = plan_cases(5, [12, 20], 4, seed=0)
    assert {p.depth for p in plans} <= {12, 20} and all(0 <= p.start <= p.depth - 4 for p in plans)
    assert [p.depth for p in plan_cases(2, [12], 4, 0, depth=30)] == [30, 30]
    with pytest.raises(ValueError, match="shallower than one subsequence"):
        plan_cases(1, [12], 6, 0, depth=5)
    with pytest.raises(ValueError, match=r"start must be in \[0, 8\]"):
        plan_cases(1, [12], 4, 0, start=9)


def test_label_set_mismatch_is_refused(tiny_dataset, tmp_path):
    other = MultiConditionDiffusionUNet(
        5, 4, channels=(8, 16), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8
    )
    with pytest.raises(DataError, match="the dataset has 4 labels but the network was built for 5"):
        _synthesise(other, tiny_dataset, tmp_path / "x")


def test_completion_keeps_the_known_slices_and_the_geometry(network, tmp_path):
    partial = slab_label()
    partial[..., :4] = 0
    partial[..., 8:] = 0
    save_nifti(tmp_path / "partial.nii.gz", partial, TINY_AFFINE)
    labels = {"0": "background", "1": "a", "2": "b", "3": "c"}
    out = complete_mask_file(
        network, _sampler(), tmp_path / "partial.nii.gz", (4, 8), tmp_path / "done.nii.gz", labels, image_size=(8, 8)
    )
    completed = load_nifti(out)
    assert np.array_equal(completed.array[..., 4:8], slab_label()[..., 4:8])
    np.testing.assert_allclose(completed.affine, TINY_AFFINE)
    assert completed.array.max() <= 3
    bad = partial.copy()
    bad[0, 0, 5] = 9
    save_nifti(tmp_path / "bad.nii.gz", bad, TINY_AFFINE)
    with pytest.raises(DataError, match=r"bad\.nii\.gz: known slices hold label values \[9\]"):
        complete_mask_file(network, _sampler(), tmp_path / "bad.nii.gz", (4, 8), tmp_path / "x.nii.gz", labels)
