from __future__ import annotations

import numpy as np
import torch

from medgen3d.data.dataset import Case, DatasetSpec, write_dataset
from medgen3d.data.intensity import IntensityScale
from medgen3d.data.io import load_nifti, save_nifti
from medgen3d.data.validate import validate_dataset
from medgen3d.networks import SequenceGenerator
from medgen3d.synthesis.images import generate_image_volumes, synthesise_images
from tests.conftest import TINY_AFFINE, TINY_LABELS, slab_label


def _masks(root, depths=(12, 9)):
    cases = []
    for i, depth in enumerate(depths):
        save_nifti(root / "labels" / f"m{i}.nii.gz", slab_label((16, 16, depth)), TINY_AFFINE)
        cases.append(Case(None, f"labels/m{i}.nii.gz"))
    return write_dataset(root, DatasetSpec("tiny-synthetic-masks", "CT", dict(TINY_LABELS), training=cases))


def _generator():
    torch.manual_seed(0)
    return SequenceGenerator(4, ngf=8, n_downsample=2, n_blocks=2).eval()


def test_batched_generation_equals_one_case_at_a_time():
    generator = _generator()
    volumes = [torch.from_numpy(slab_label((8, 8, d))).permute(2, 0, 1) for d in (7, 4)]
    together = generate_image_volumes(generator, volumes, 4)
    alone = [generate_image_volumes(generator, [v], 4)[0] for v in volumes]
    assert [v.shape for v in together] == [(7, 8, 8), (4, 8, 8)]
    for a, b in zip(together, alone):
        assert torch.equal(a, b)  # a case's image does not depend on the cases generated with it
    assert all(v.min() >= -1 and v.max() <= 1 for v in together)


def test_known_slices_are_kept_and_the_generator_continues_after_them():
    generator = _generator()
    volume = torch.from_numpy(slab_label((8, 8, 7))).permute(2, 0, 1)
    prefix = torch.linspace(-1, 1, 3 * 64).reshape(3, 8, 8)
    [continued] = generate_image_volumes(generator, [volume], 4, known=[prefix])
    assert torch.equal(continued[:3], prefix)
    [fresh] = generate_image_volumes(generator, [volume], 4)
    # slice 3 sees the known slices as its history, not the generator's own
    assert not torch.allclose(continued[3], fresh[3], atol=1e-3)
    history = torch.stack([prefix[1:3, None]])  # (1, L, 1, H, W): slices 1 and 2
    from medgen3d.diffusion.conditions import one_hot_slices

    masks = one_hot_slices(volume[None], 4)[:, 1:4]
    assert torch.allclose(continued[3], generator(masks, history, torch.ones(1, 2)).image[0, 0], atol=1e-5)


def test_images_are_paired_with_their_masks_in_the_mask_geometry_and_data_scale(tmp_path):
    masks = _masks(tmp_path / "masks")
    spec = synthesise_images(_generator(), masks, tmp_path / "pairs", IntensityScale(-1000.0, 1000.0), (8, 8), 2)
    validate_dataset(spec.root)
    assert spec.name == "tiny-synthetic-pairs" and [c.case_id for c in spec.training] == ["m0", "m1"]
    for case, depth in zip(spec.training, (12, 9)):
        image = load_nifti(spec.path(case.image))
        label = load_nifti(spec.path(case.label))
        assert image.array.shape == label.array.shape == (16, 16, depth)
        np.testing.assert_allclose(image.affine, TINY_AFFINE)
        assert np.array_equal(label.array, slab_label((16, 16, depth)))
        assert -1000 <= image.array.min() and image.array.max() <= 1000  # HU, not [-1, 1]
        assert image.array.max() - image.array.min() > 10


def test_finished_cases_are_kept_on_a_rerun(tmp_path):
    masks = _masks(tmp_path / "masks")
    spec = synthesise_images(_generator(), masks, tmp_path / "pairs", IntensityScale(0.0, 1.0), (8, 8))
    first = spec.path(spec.training[0].image)
    stamp = first.stat().st_mtime_ns
    spec.path(spec.training[1].image).unlink()
    done = []
    synthesise_images(
        _generator(),
        masks,
        tmp_path / "pairs",
        IntensityScale(0.0, 1.0),
        (8, 8),
        progress=lambda d, t, c: done.append(c),
    )
    assert done == ["m1"] and first.stat().st_mtime_ns == stamp
