"""The generating bundles' run components: counts and sizes refused when built, output folders claimed per run."""

from __future__ import annotations

import pytest

from medgen3d.data.io import DataError, SettingError
from medgen3d.diffusion.sampler import SubsequenceSampler
from medgen3d.synthesis.components import ImageSynthesis, MaskCompletion, MaskSynthesis, claim_folder
from tests.conftest import random_mcdpm


def _masks(network, dataset, out, **values):
    sampler = SubsequenceSampler.__new__(SubsequenceSampler)  # never sampled from: construction is what is checked
    return MaskSynthesis(network, sampler, dataset, out, **values)


def test_mask_synthesis_refuses_counts_depths_and_sizes_when_built(tiny_dataset, tmp_path):
    network = random_mcdpm(num_classes=4, length=4)
    assert network.size_multiple == 2 ** (len(network.block_out_channels) - 1)
    cases = [
        ({"num_cases": 0}, "num_cases: must be at least 1, got 0"),
        ({"batch_size": -2}, "batch_size: must be at least 1, got -2"),
        ({"depth": 3}, "depth: 3 is shallower than one subsequence (4 slices)"),
        ({"num_condition": 4}, "num_condition: must be below the subsequence length 4, got 4"),
        ({"rank": 2, "world_size": 2}, "rank: must be in [0, 1], got 2"),
        (
            {"image_size": [17, 16]},
            f"image_size: [17, 16] does not fit the network: both sides must be multiples of "
            f"{network.size_multiple}",
        ),
    ]
    for values, message in cases:
        with pytest.raises(SettingError) as err:
            _masks(network, tiny_dataset, tmp_path / "out", **values)
        assert str(err.value) == message
    _masks(network, tiny_dataset, tmp_path / "out", image_size=[16, 16], depth=8)  # a valid one is built
    with pytest.raises(SettingError, match=r"partial_file: give the partial mask"):
        MaskCompletion(network, None, "", [0, 2], tmp_path / "x.nii.gz", {})
    with pytest.raises(SettingError, match=r"known_slices: must be \[first, end\)"):
        MaskCompletion(network, None, "p.nii.gz", [3, 3], tmp_path / "x.nii.gz", {})


def test_image_synthesis_refuses_a_size_the_generator_cannot_take(tiny_dataset, tmp_path):
    from medgen3d.data.intensity import IntensityScale
    from medgen3d.networks import SequenceGenerator

    generator = SequenceGenerator(num_classes=4, ngf=4, n_downsample=2, n_blocks=1)
    with pytest.raises(SettingError, match=r"image_size: \[16, 18\] does not fit the network: .* multiples of 4"):
        ImageSynthesis(generator, tiny_dataset, tmp_path, IntensityScale(0, 1), image_size=[16, 18])


def test_claim_folder_resumes_the_same_run_and_refuses_another(tmp_path):
    out = tmp_path / "out"
    claim_folder(out, "mask_mcdpm", {"seed": 0, "num_cases": 3}, "labels")
    (out / "labels").mkdir()
    (out / "labels" / "synth-0000.nii.gz").write_bytes(b"case")
    claim_folder(out, "mask_mcdpm", {"seed": 0, "num_cases": 3}, "labels")  # the same run: resumes
    with pytest.raises(DataError, match=r"holds another mask_mcdpm run \(num_cases, seed differ\)"):
        claim_folder(out, "mask_mcdpm", {"seed": 1, "num_cases": 4}, "labels")
    stray = tmp_path / "stray"
    (stray / "images").mkdir(parents=True)
    (stray / "images" / "x.nii.gz").write_bytes(b"x")
    with pytest.raises(DataError, match=r"its images/ holds files of another run"):
        claim_folder(stray, "image_vid2vid", {"masks": "."}, "images")
    assert sorted(p.name for p in stray.rglob("*")) == ["images", "x.nii.gz"]  # nothing written into it
