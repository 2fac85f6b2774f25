from __future__ import annotations

import warnings

import pytest
import torch
from ignite.handlers import Checkpoint
from monai.networks.utils import copy_model_state

from medgen3d.networks import (
    FixedConditionWrapper,
    MultiConditionDiffusionUNet,
    PackedSegmentationDenoiser,
    PackedSequenceGenerator,
    SequenceGenerator,
    ViewDenoisers,
)
from medgen3d.views import check_views
from tests.conftest import tiny_spade
from tests.test_views import BAD_VIEW_LISTS


def _spade():
    return tiny_spade(3)


def _mcdpm():
    small = dict(channels=(8, 16), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8)
    return MultiConditionDiffusionUNet(3, 2, position_mode="concat", **small)


def _generator():
    return SequenceGenerator(3, history=2, ngf=8, n_downsample=2, n_blocks=1)


# wrapper name -> (inner network, wrapper around it, packed input shape): what verify_net_in_out builds
CASES = {
    "mcdpm": (_mcdpm, FixedConditionWrapper, (1, 2 * 4, 8, 8)),
    "vid2vid": (_generator, PackedSequenceGenerator, (1, 3 * 3 + 2, 16, 16)),
    "sdm": (_spade, PackedSegmentationDenoiser, (1, 1 + 3, 8, 8)),
}


def _trained(network: torch.nn.Module) -> torch.nn.Module:
    """Moved away from its initial weights (MONAI zero-initialises output layers, so a fresh UNet outputs zeros)."""
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return network.eval()


@pytest.fixture(params=list(CASES))
def case(request):
    torch.manual_seed(0)
    build, wrap, shape = CASES[request.param]
    return build, wrap, torch.rand(shape)


def test_a_wrapper_saves_exactly_the_wrapped_networks_state_dict(case):
    build, wrap, _ = case
    inner = build()
    wrapper = wrap(inner)
    state, inner_state = wrapper.state_dict(), inner.state_dict()
    assert list(state) == list(inner_state)  # same keys, same order
    assert all(state[key] is inner_state[key] or torch.equal(state[key], inner_state[key]) for key in state)
    assert state._metadata == inner_state._metadata  # module versions, as the network records them
    # nested in a container, the container's prefix is kept and only the inner name is dropped
    nested = torch.nn.ModuleDict({"stage": wrap(build())})
    assert list(nested.state_dict()) == [f"stage.{key}" for key in inner_state]
    nested.load_state_dict({f"stage.{key}": value for key, value in inner_state.items()})
    assert torch.equal(next(iter(nested.state_dict().values())), next(iter(inner_state.values())))


def test_model_pt_of_the_bare_network_loads_into_a_fresh_wrapper_by_every_route(case, tmp_path):
    build, wrap, x = case
    torch.manual_seed(1)
    trained = _trained(build())
    torch.save(trained.state_dict(), tmp_path / "model.pt")  # what training writes: the bare network
    model_pt = torch.load(tmp_path / "model.pt", weights_only=True)
    expected = wrap(trained)(x)
    fresh = wrap(build()).eval()
    assert not torch.allclose(fresh(x), expected)

    fresh.load_state_dict(model_pt)  # strict, as ignite's Checkpoint.load_objects in ckpt_export
    assert torch.equal(fresh(x), expected)

    copied = wrap(build()).eval()
    _, updated, unchanged = copy_model_state(copied, model_pt)  # ckpt_export without ignite
    assert unchanged == [] and updated == sorted(model_pt)
    assert torch.equal(copied(x), expected)

    loaded = wrap(build()).eval()
    Checkpoint.load_objects(to_load={"": loaded}, checkpoint=str(tmp_path / "model.pt"))
    assert torch.equal(loaded(x), expected)


def test_a_state_dict_that_does_not_fit_names_the_keys_as_the_file_has_them(case):
    build, wrap, _ = case
    state = build().state_dict()
    first = next(iter(state))
    state["extra.weight"] = state.pop(first)
    with pytest.raises(RuntimeError) as err:
        wrap(build()).load_state_dict(state)
    message = str(err.value)
    assert f'Missing key(s) in state_dict: "{first}"' in message
    assert 'Unexpected key(s) in state_dict: "extra.weight"' in message
    result = wrap(build()).load_state_dict(state, strict=False)
    assert result.missing_keys == [first] and result.unexpected_keys == ["extra.weight"]


def test_every_wrapper_traces(case):
    build, wrap, x = case
    torch.manual_seed(1)
    wrapper = wrap(_trained(build()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and shape-check notices of the tracer
        traced = torch.jit.trace(wrapper, x, check_trace=False)  # checked below, on other values
    other = torch.rand_like(x)
    assert torch.allclose(traced(other), wrapper(other), atol=1e-5)
    if wrap is not PackedSequenceGenerator:
        # the diffusion UNets' traces take other batch sizes; the generator's does not (MONAI's Warp caches its
        # reference grid, which the trace records as a constant of the traced shape)
        batch = torch.rand(2, *x.shape[1:])
        assert torch.allclose(traced(batch), wrapper(batch), atol=1e-5)


def test_view_denoisers_hold_one_copy_per_view_under_the_views_name():
    torch.manual_seed(0)
    network = _trained(_spade())
    denoisers = ViewDenoisers(network, ["sagittal", "axial"]).eval()
    assert denoisers.views == ("sagittal", "axial") and denoisers["axial"] is not network
    inner = list(network.state_dict())
    assert list(denoisers.state_dict()) == [f"{view}.{key}" for view in ("sagittal", "axial") for key in inner]
    x = torch.rand(2, 1 + 3, 8, 8)
    out = denoisers(x)
    assert out.shape == (2, 1, 8, 8)
    with torch.no_grad():  # a different axial network moves the mean: forward averages over the views
        for parameter in denoisers["axial"].parameters():
            parameter.add_(0.1)
    t = torch.full((2,), 5, dtype=torch.long)
    views_mean = (denoisers["axial"](x[:, :1], t, seg=x[:, 1:]) + network(x[:, :1], t, seg=x[:, 1:])) / 2
    assert torch.allclose(denoisers(x), views_mean, atol=1e-6)
    with pytest.raises(KeyError, match=r"no network for view 'coronal'; these hold \['sagittal', 'axial'\]"):
        denoisers["coronal"]


@pytest.mark.parametrize("views, message", BAD_VIEW_LISTS)
def test_view_names_are_checked(views, message):
    with pytest.raises(ValueError, match=message):
        ViewDenoisers(torch.nn.Identity(), views)


def test_all_views_by_default_and_a_negative_timestep_is_refused():
    assert ViewDenoisers(torch.nn.Identity()).views == check_views(None) == ("axial", "coronal", "sagittal")
    with pytest.raises(ValueError, match="timestep must be non-negative, got -1"):
        ViewDenoisers(torch.nn.Identity(), timestep=-1)
    with pytest.raises(ValueError, match="network must be an nn.Module, got dict"):
        PackedSegmentationDenoiser({})
