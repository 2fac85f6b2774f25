"""The generating bundles' run components: counts and sizes refused when built, output folders claimed per run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from medgen3d.data.intensity import IntensityScale
from medgen3d.data.io import DataError, SettingError, load_nifti
from medgen3d.diffusion.refiner import SemanticRefiner
from medgen3d.diffusion.sampler import SubsequenceSampler
from medgen3d.networks import SequenceGenerator
from medgen3d.synthesis.components import ImageSynthesis, MaskCompletion, MaskSynthesis, Refinement, claim_folder
from medgen3d.views import VIEWS
from tests.conftest import TINY_SHAPE, random_mcdpm, tiny_spade


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
        ({"new_per_window": 3}, "new_per_window: must be 1..2 (null: every new slice of a window), got 3"),
        ({"new_per_window": 0}, "new_per_window: must be 1..2 (null: every new slice of a window), got 0"),
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
    with pytest.raises(SettingError, match=r"new_per_window: must be 1\.\.3 .*got 4"):
        MaskCompletion(network, None, "p.nii.gz", [0, 2], tmp_path / "x.nii.gz", {}, num_condition=1, new_per_window=4)


def test_image_synthesis_refuses_a_size_the_generator_cannot_take(tiny_dataset, tmp_path):
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


def _conv_dtypes(network: torch.nn.Module) -> list[torch.dtype]:
    """The output dtypes of ``network``'s first convolution, one per forward pass."""
    conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))
    seen: list = []
    conv.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    return seen


def test_every_generating_step_runs_its_networks_in_bf16_and_writes_float32_volumes(tiny_dataset, tmp_path):
    mcdpm = random_mcdpm(4, 4)
    generator = SequenceGenerator(4, ngf=8, n_downsample=2, n_blocks=2).eval()
    spade = tiny_spade(4, channels=(8, 16)).eval()
    seen = {name: _conv_dtypes(net) for name, net in (("mask", mcdpm), ("image", generator), ("refine", spade))}
    sampler = SubsequenceSampler(DDIMScheduler(100, prediction_type="sample"), 3, guidance_scale=1.5)
    masks = MaskSynthesis(
        mcdpm, sampler, tiny_dataset, tmp_path / "masks", num_cases=2, image_size=[8, 8], precision="bf16"
    ).run()
    pairs = ImageSynthesis(
        generator, masks, tmp_path / "pairs", IntensityScale(-1000.0, 1000.0), [8, 8], precision="bf16"
    ).run()
    refiner = SemanticRefiner(DDPMScheduler(1000), noise_steps=2, guidance_scale=1.5)
    refined = Refinement(dict.fromkeys(VIEWS, spade), refiner, pairs, tmp_path / "refined", precision="bf16").run()
    assert {name: set(dtypes) for name, dtypes in seen.items()} == dict.fromkeys(seen, {torch.bfloat16})
    assert all("forward" not in vars(net) for net in (mcdpm, generator, spade))  # restored after each run
    for mask_case, pair_case, refined_case in zip(masks.training, pairs.training, refined.training):
        label = load_nifti(masks.path(mask_case.label)).array
        assert label.shape == TINY_SHAPE and label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1, 2, 3}
        for spec, case in ((pairs, pair_case), (refined, refined_case)):
            image = load_nifti(spec.path(case.image)).array
            assert image.shape == TINY_SHAPE and image.dtype == np.float32 and np.isfinite(image).all()
            assert image.std() > 0


def test_an_unknown_precision_is_refused_when_built(tiny_dataset, tmp_path):
    network = random_mcdpm(num_classes=4, length=4)
    with pytest.raises(SettingError, match=r"precision: must be one of \['auto', 'bf16', 'fp16', 'fp32'\], got 'half'"):
        _masks(network, tiny_dataset, tmp_path / "out", precision="half")
    with pytest.raises(SettingError, match=r"precision: must be one of"):
        MaskCompletion(network, None, "p.nii.gz", [0, 2], tmp_path / "x.nii.gz", {}, precision="half")
