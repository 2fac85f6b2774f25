from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from medgen3d.data.io import DataError, load_nifti, save_nifti
from medgen3d.data.validate import validate_dataset
from medgen3d.diffusion.refiner import SemanticRefiner
from medgen3d.engines.checkpoint import save_atomically
from medgen3d.networks import ViewDenoisers
from medgen3d.synthesis.refinement import assemble_view_weights, load_view_networks, refine_dataset
from medgen3d.views import VIEWS
from tests.conftest import TINY_AFFINE, tiny_spade


def _network():
    return tiny_spade(4, channels=(8, 16)).eval()


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
    assert first.stat().st_mtime_ns == stamp and done == []  # every case finished: none refined again


def test_a_perfect_denoiser_returns_the_image_as_zero_steps_do_outliers_included(tiny_dataset, tmp_path, monkeypatch):
    # the brightest voxels lie far beyond the 99.5th percentile that maps to 1: clipping would cut them off
    image = load_nifti(tiny_dataset.path(tiny_dataset.training[0].image))
    bright = image.array.copy()
    bright[4:6, 4:6, 3] = 5.0 * bright.max()
    save_nifti(tiny_dataset.path(tiny_dataset.training[0].image), bright, image.affine)
    views = dict.fromkeys(VIEWS, _trained(0))
    unchanged = SemanticRefiner(DDPMScheduler(1000), noise_steps=0)
    copied = refine_dataset(views, unchanged, tiny_dataset, tmp_path / "copied")
    perfect = SemanticRefiner(DDPMScheduler(1000), noise_steps=4)
    monkeypatch.setattr(perfect, "refine_slices", lambda network, x, seg, generator: x)  # gives back what it sees
    refined = refine_dataset(views, perfect, tiny_dataset, tmp_path / "perfect")
    for a, b in zip(copied.cases(), refined.cases()):
        np.testing.assert_allclose(
            load_nifti(copied.path(a.image)).array, load_nifti(refined.path(b.image)).array, rtol=1e-5, atol=1e-3
        )
    # a real network refines the image and the bright voxels stay bright
    monkeypatch.undo()
    spec = refine_dataset(views, perfect, tiny_dataset, tmp_path / "real")
    out = load_nifti(spec.path(spec.training[0].image)).array
    assert np.abs(out - bright).max() > 1.0 and out[4:6, 4:6, 3].min() > 4.0 * image.array.max()


def test_a_generated_set_is_refined_in_the_scale_it_was_written_with(tiny_dataset, tmp_path, monkeypatch):
    # the tiny images span 0..300; a generator that wrote them with the scale 0..600 made them all dark ([-1, 0]), and
    # the views must see them so, not stretched to [-1, 1] by their own percentiles as a real image is
    generated = dataclasses.replace(tiny_dataset, extra={"medgen3d": {"intensity_scale": [0.0, 600.0]}})
    refiner = SemanticRefiner(DDPMScheduler(1000), noise_steps=2)
    seen: list[torch.Tensor] = []

    def record(network, x, seg, generator):
        seen.append(x.clone())
        return x

    monkeypatch.setattr(refiner, "refine_slices", record)
    views = dict.fromkeys(VIEWS, _network())
    spec = refine_dataset(views, refiner, generated, tmp_path / "generated")
    assert max(float(x.max()) for x in seen) <= 1e-3 and min(float(x.min()) for x in seen) >= -1.0
    assert spec.extra["medgen3d"]["intensity_scale"] == [0.0, 600.0]  # the refined set keeps the scale it is on
    for a, b in zip(tiny_dataset.cases(), spec.cases()):  # what the views gave back is written back unchanged
        np.testing.assert_allclose(
            load_nifti(tiny_dataset.path(a.image)).array, load_nifti(spec.path(b.image)).array, rtol=1e-5, atol=1e-3
        )
    seen.clear()
    refine_dataset(views, refiner, tiny_dataset, tmp_path / "real")  # no recorded scale: each image's own
    assert max(float(x.max()) for x in seen) > 0.9


def test_mismatched_pair_and_missing_view_checkpoint_are_named(tiny_dataset, tmp_path):
    save_nifti(tiny_dataset.path(tiny_dataset.training[0].label), np.zeros((16, 16, 10), np.uint8), TINY_AFFINE)
    refiner = SemanticRefiner(DDPMScheduler(1000), noise_steps=1)
    with pytest.raises(DataError, match=r"case-0\.nii\.gz: shape \(16, 16, 10\) differs from its image"):
        refine_dataset(dict.fromkeys(VIEWS, _network()), refiner, tiny_dataset, tmp_path / "x")
    save_atomically(_network().state_dict(), tmp_path / "models" / "axial" / "model.pt")
    with pytest.raises(DataError) as err:
        load_view_networks(_network(), tmp_path / "models", ["axial", "coronal"], "cpu")
    assert str(err.value) == (
        f"{tmp_path}/models/model.pt: not found; the per-view weights {tmp_path}/models/<view>/model.pt hold views "
        "['axial']; missing ['coronal']: train them (train.json --view coronal)"
    )


def _trained(seed):
    """A network with weights of its own (MONAI zero-initialises the output layer, so fresh ones all output 0)."""
    torch.manual_seed(seed)
    network = _network()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return network


def _outputs(network):
    torch.manual_seed(100)
    x, seg = torch.randn(2, 1, 8, 8), torch.rand(2, 4, 8, 8)
    with torch.no_grad():
        return network(x, torch.tensor([3, 7]), seg=seg)


@pytest.fixture
def per_view(tmp_path):
    """Training outputs ``models/<view>/model.pt`` of three differently trained views."""
    networks = {view: _trained(seed) for seed, view in enumerate(VIEWS)}
    for view, network in networks.items():
        save_atomically(network.state_dict(), tmp_path / "models" / view / "model.pt")
    return tmp_path / "models", networks


def test_assembled_weights_load_every_view_as_it_was_trained_and_so_do_the_per_view_files(per_view):
    models, trained = per_view
    legacy = load_view_networks(_network(), models, list(VIEWS), "cpu")  # no models/model.pt yet
    path = assemble_view_weights(models, list(VIEWS))
    assert path == models / "model.pt"
    state = torch.load(path, weights_only=True)
    assert list(state) == list(ViewDenoisers(_network()).state_dict())  # "<view>.<key>", views in VIEWS order
    for view, network in trained.items():
        assert all(torch.equal(state[f"{view}.{key}"], value) for key, value in network.state_dict().items())
    for template in (_network(), ViewDenoisers(_network(), ["axial"])):  # a ViewDenoisers serves as the template
        loaded = load_view_networks(template, models, ["sagittal", "axial"], "cpu")
        assert list(loaded) == ["sagittal", "axial"] and not any(network.training for network in loaded.values())
        for view, network in loaded.items():
            assert torch.equal(_outputs(network), _outputs(trained[view]))
            assert torch.equal(_outputs(legacy[view]), _outputs(trained[view]))
    assert not torch.equal(_outputs(loaded["axial"]), _outputs(loaded["sagittal"]))
    # ckpt_export loads the one file into a ViewDenoisers network_def strictly
    ViewDenoisers(_network()).load_state_dict(state)


def test_a_view_the_file_lacks_is_named_with_what_to_do(per_view, caplog):
    models, trained = per_view
    (models / "coronal" / "model.pt").unlink()
    (models / "sagittal" / "model.pt").unlink()
    assemble_view_weights(models, list(VIEWS))
    with pytest.raises(DataError) as err:
        load_view_networks(_network(), models, list(VIEWS), "cpu")
    assert str(err.value) == (
        f"{models}/model.pt: holds views ['axial']; missing ['coronal', 'sagittal']: train them "
        "(train.json --view coronal)"
    )
    # coronal trained since: model.pt is older than it, and assembling again adds it
    save_atomically(trained["coronal"].state_dict(), models / "coronal" / "model.pt")
    stamp = (models / "model.pt").stat().st_mtime_ns - 10**9  # a second older, whatever the clock's resolution
    os.utime(models / "model.pt", ns=(stamp, stamp))
    with pytest.raises(DataError, match=r"missing \['coronal'\]: assemble_view_weights adds \['coronal'\] from "):
        load_view_networks(_network(), models, ["axial", "coronal"], "cpu")
    with caplog.at_level(logging.WARNING, logger="medgen3d.synthesis.refinement"):
        load_view_networks(_network(), models, ["axial"], "cpu")
    assert "model.pt is older than" in caplog.text and "coronal/model.pt" in caplog.text


def test_assembling_again_keeps_the_views_only_the_existing_file_holds(per_view):
    models, trained = per_view
    assemble_view_weights(models, list(VIEWS))  # e.g. the bundle as downloaded
    for view in ("coronal", "sagittal"):
        (models / view / "model.pt").unlink()
    retrained = _trained(7)
    save_atomically(retrained.state_dict(), models / "axial" / "model.pt")
    assemble_view_weights(models, ["axial"])
    loaded = load_view_networks(_network(), models, list(VIEWS), "cpu")
    assert torch.equal(_outputs(loaded["axial"]), _outputs(retrained))
    assert torch.equal(_outputs(loaded["coronal"]), _outputs(trained["coronal"]))


def test_unreadable_foreign_and_mismatched_weights_are_named(per_view, tmp_path):
    models, _ = per_view
    with pytest.raises(DataError, match=r"no view weights to assemble .* train them \(train.json --view axial\)"):
        assemble_view_weights(tmp_path / "empty", list(VIEWS))
    path = assemble_view_weights(models, list(VIEWS))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # truncated, as by a full disk
    with pytest.raises(DataError, match=rf"^{path}: not a readable checkpoint \("):
        load_view_networks(_network(), models, ["axial"], "cpu")
    save_atomically(_network().state_dict(), path)  # one view's network alone
    with pytest.raises(DataError, match=rf"^{path}: key '.*' does not start with a view name"):
        load_view_networks(_network(), models, ["axial"], "cpu")
    save_atomically(ViewDenoisers(_network()).state_dict(), path)
    other = tiny_spade(4)
    with pytest.raises(DataError, match=rf"^{path}: the axial weights do not fit the configured network: ") as err:
        load_view_networks(other, models, ["axial"], "cpu")
    assert "of another shape (first '" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"views must not repeat"):
        load_view_networks(_network(), models, ["axial", "axial"], "cpu")
