from __future__ import annotations

import pytest
import torch

from medgen3d.transforms import RandSliceAlongViewd, RandViewAsDepthd


def test_axial_only_changes_nothing():
    volume = torch.rand(1, 3, 4, 5)
    out = RandViewAsDepthd(["image", "label"], ["axial"])({"image": volume, "label": volume > 0.5})
    assert torch.equal(out["image"], volume)
    assert torch.equal(out["label"], volume > 0.5)


def test_every_view_is_drawn_and_image_and_label_move_together():
    volume = torch.arange(60.0).reshape(1, 3, 4, 5)
    transform = RandViewAsDepthd(["image", "label"], ["axial", "coronal", "sagittal"])
    transform.set_random_state(0)
    shapes = set()
    for _ in range(30):
        out = transform({"image": volume, "label": volume * 2})
        assert torch.equal(out["label"], out["image"] * 2)
        shapes.add(tuple(out["image"].shape))
    # axial keeps (H, W, D); coronal puts W last; sagittal puts H last
    assert shapes == {(1, 3, 4, 5), (1, 3, 5, 4), (1, 4, 5, 3)}
    sagittal = volume.movedim(1, -1)
    assert torch.equal(sagittal[0, :, :, 2], volume[0, 2])  # the last axis indexes sagittal slices


def test_unknown_views_are_refused():
    with pytest.raises(ValueError, match="views"):
        RandViewAsDepthd("image", ["oblique"])


@pytest.mark.parametrize("view, axis", [("axial", 3), ("coronal", 2), ("sagittal", 1)])
def test_a_slice_along_a_view_is_the_same_random_slice_of_every_key(view, axis):
    volume = torch.rand(2, 5, 6, 7)
    transform = RandSliceAlongViewd(["image", "label"], view)
    transform.set_random_state(0)
    indices = set()
    for _ in range(60):
        out = transform({"image": volume, "label": volume * 2})
        assert torch.equal(out["image"], volume.select(axis, transform.index))  # the recorded index replays it
        assert torch.equal(out["label"], out["image"] * 2)
        indices.add(transform.index)
    assert indices == set(range(volume.shape[axis]))  # every slice of the view is drawn


def test_an_unknown_view_to_slice_along_is_refused():
    with pytest.raises(ValueError, match="view must be one of .*, got 'oblique'"):
        RandSliceAlongViewd("image", "oblique")
