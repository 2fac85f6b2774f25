from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medgen3d.metrics.fidelity import view_frechet_distances, view_slices
from medgen3d.metrics.lpips import view_lpips_diversity
from medgen3d.networks import ViewDenoisers
from medgen3d.transforms import RandSliceAlongViewd, RandViewAsDepthd
from medgen3d.views import VIEWS, check_view, check_views, from_view, to_view


def _message(call) -> str:
    """The ValueError ``call`` raises, which must come from :mod:`medgen3d.views`, the one place views are checked."""
    with pytest.raises(ValueError) as error:
        call()
    assert Path(error.traceback[-1].path).parts[-2:] == ("medgen3d", "views.py")
    return str(error.value)


@pytest.mark.parametrize("view, axis", [("axial", 2), ("coronal", 1), ("sagittal", 0)])
def test_views_slice_along_their_axis_and_restack_exactly(view, axis):
    volume = torch.rand(2, 5, 6, 7)
    slices = to_view(volume, view)
    assert check_view(view) == VIEWS[view] == axis
    assert slices.shape[0] == volume.shape[1 + axis] and slices.shape[1] == 2
    assert torch.equal(slices[3], volume.select(1 + axis, 3))
    assert torch.equal(from_view(slices, view), volume)


def test_all_views_in_order_and_a_subset_in_its_own_order():
    assert check_views(None) == tuple(VIEWS) == ("axial", "coronal", "sagittal")
    assert check_views(["sagittal", "axial"]) == ("sagittal", "axial")


# every holder of a view list (ViewDenoisers, the transforms, the metrics) refuses these through check_views
BAD_VIEW_LISTS = [
    ([], r"views must name at least one of \['axial', 'coronal', 'sagittal'\]"),
    (["axial", "axial"], r"views must not repeat, got \['axial', 'axial'\]"),
    (["axial", "frontal"], r"views must be among .*, got \['frontal'\]"),
    ("axial", r"views must be a sequence of view names, got the string 'axial'"),
]


@pytest.mark.parametrize("views, message", BAD_VIEW_LISTS)
def test_view_lists_are_checked(views, message):
    with pytest.raises(ValueError, match=message):
        check_views(views)


def test_an_unknown_view_is_named():
    message = "view must be one of ['axial', 'coronal', 'sagittal'], got 'oblique'"
    assert _message(lambda: check_view("oblique")) == message


_VOLUME = torch.zeros(4, 5, 6)  # (H, W, D)
ONE_VIEW = {
    "to_view": lambda: to_view(_VOLUME[None], "oblique"),
    "from_view": lambda: from_view(_VOLUME[:, None], "oblique"),
    "RandSliceAlongViewd": lambda: RandSliceAlongViewd("image", "oblique"),
    "view_slices": lambda: view_slices(_VOLUME, "oblique"),
    "view_lpips_diversity": lambda: view_lpips_diversity(lambda a, b: (a - b).abs(), [_VOLUME, _VOLUME], ["oblique"]),
}
VIEW_LISTS = {
    "ViewDenoisers": lambda: ViewDenoisers(torch.nn.Identity(), ["oblique"]),
    "RandViewAsDepthd": lambda: RandViewAsDepthd("image", ["oblique"]),
    "view_frechet_distances": lambda: view_frechet_distances(lambda s: s.flatten(1), [_VOLUME], [_VOLUME], ["oblique"]),
}


@pytest.mark.parametrize("path", list(ONE_VIEW))
def test_every_single_view_path_refuses_an_unknown_view_with_the_message_of_check_view(path):
    assert _message(ONE_VIEW[path]) == _message(lambda: check_view("oblique"))


@pytest.mark.parametrize("path", list(VIEW_LISTS))
def test_every_view_list_path_refuses_an_unknown_view_with_the_message_of_check_views(path):
    expected = _message(lambda: check_views(["oblique"]))
    assert expected == "views must be among ['axial', 'coronal', 'sagittal'], got ['oblique']"
    assert _message(VIEW_LISTS[path]) == expected
