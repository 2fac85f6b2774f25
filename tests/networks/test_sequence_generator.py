from __future__ import annotations

import pytest
import torch

from medgen3d.networks import PackedSequenceGenerator, SequenceGenerator
from medgen3d.networks.sequence_generator import composite, warp_slice


def test_zero_flow_is_the_identity_and_a_known_shift_moves_the_image_by_it():
    image = torch.rand(2, 1, 12, 10)
    assert torch.allclose(warp_slice(image, torch.zeros(2, 2, 12, 10)), image, atol=1e-6)
    flow = torch.zeros(2, 2, 12, 10)
    flow[:, 0], flow[:, 1] = 2.0, -3.0  # each output pixel reads 2 rows down and 3 columns left
    warped = warp_slice(image, flow)
    assert torch.allclose(warped[:, :, :-2, 3:], image[:, :, 2:, :-3], atol=1e-5)


def test_occlusion_weight_one_gives_the_hallucination_and_zero_the_warped_slice():
    previous, hallucinated, flow = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), torch.randn(1, 2, 8, 8)
    assert torch.equal(composite(previous, hallucinated, flow, torch.ones(1, 1, 8, 8)), hallucinated)
    assert torch.equal(composite(previous, hallucinated, flow, torch.zeros(1, 1, 8, 8)), warp_slice(previous, flow))


@pytest.fixture
def generator():
    torch.manual_seed(0)
    return SequenceGenerator(3, history=2, ngf=8, n_downsample=2, n_blocks=2).eval()


def test_first_slice_without_history_is_pure_hallucination(generator):
    masks = torch.randn(2, 3, 3, 16, 16)
    previous = torch.randn(2, 2, 1, 16, 16)
    out = generator(masks, previous, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert out.image.shape == (2, 1, 16, 16) and out.flow.shape == (2, 2, 16, 16)
    assert torch.equal(out.occlusion[0], torch.ones(1, 16, 16))
    assert torch.equal(out.image[0], out.hallucinated[0])
    assert (out.occlusion[1] < 1).all() and (out.occlusion[1] > 0).all()
    # invalid history slots are ignored: whatever they hold, the output is the same
    again = generator(masks, previous * 0 + 5.0, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert torch.allclose(again.image[0], out.image[0])


def test_packed_wrapper_matches_the_generator(generator):
    x = torch.randn(1, 3 * 3 + 2, 16, 16)
    packed = PackedSequenceGenerator(generator)(x)
    direct = generator(x[:, :9].reshape(1, 3, 3, 16, 16), x[:, 9:].reshape(1, 2, 1, 16, 16), torch.ones(1, 2)).image
    assert torch.equal(packed, direct)


def test_skips_add_no_parameters_and_carry_fine_detail_to_the_output(generator):
    with_skips = SequenceGenerator(3, history=2, ngf=8, n_downsample=2, n_blocks=2, skips=True).eval()
    with_skips.load_state_dict(generator.state_dict())  # the same parameters, so each loads the other's weights
    masks, previous, valid = torch.randn(1, 3, 3, 16, 16), torch.randn(1, 2, 1, 16, 16), torch.zeros(1, 2)
    assert not torch.allclose(with_skips(masks, previous, valid).image, generator(masks, previous, valid).image)
    # one mask pixel changed: with skips more of the output's change stays near that pixel, because without them
    # it can only reach the output through the 4x4 cells of the bottleneck
    changed = masks.clone()
    changed[0, -1, :, 9, 6] += 3.0
    near = []
    with torch.no_grad():
        for network in (with_skips, generator):
            effect = (network(changed, previous, valid).image - network(masks, previous, valid).image).abs()[0, 0]
            near.append(float(effect[7:12, 4:9].sum() / effect.sum()))
    assert near[0] > 1.3 * near[1]


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        SequenceGenerator(1)
    with pytest.raises(ValueError, match="history must be at least 1"):
        SequenceGenerator(3, history=0)


def test_a_slice_size_the_generator_cannot_take_is_named_with_the_multiple(generator):
    with pytest.raises(ValueError, match=r"slice size 18x16 does not fit the generator: .* multiples of 4"):
        generator(torch.randn(1, 3, 3, 18, 16), torch.randn(1, 2, 1, 18, 16), torch.ones(1, 2))


def test_spade_brings_the_mask_to_every_decoder_scale():
    torch.manual_seed(0)
    spade = SequenceGenerator(3, history=2, ngf=8, n_downsample=2, n_blocks=2, spade=True).eval()
    masks, previous, valid = torch.randn(1, 3, 3, 16, 16), torch.randn(1, 2, 1, 16, 16), torch.ones(1, 2)
    changed = masks.clone()
    changed[0, -1, :, 4:8, 4:8] = changed[0, -1, :, 4:8, 4:8].flip(0)  # another label in one 4x4 patch
    scales = {}
    for name, module in spade.image_branch[0].named_children():
        if type(module).__name__ == "_SpadeUp":
            module.register_forward_hook(lambda m, args, out, name=name: scales.setdefault(name, []).append(out))
    with torch.no_grad():
        spade(masks, previous, valid)
        spade(changed, previous, valid)
    assert len(scales) == 2  # one upsampling per level, at 1/2 and at full size
    for name, (before, after) in scales.items():
        # the mask enters at this scale itself: with the encoder's features held fixed, the change still shows
        assert not torch.allclose(before, after), name
    # without the re-injection only the encoders see the mask: a decoder fed the same features gives the same output
    up = next(m for m in spade.image_branch[0] if type(m).__name__ == "_SpadeUp")
    x = torch.randn(1, 32, 4, 4)
    assert not torch.allclose(up(x, masks[:, -1]), up(x, changed[:, -1]))
    # vid2vid's generator has no such parameters, so the two do not share weights
    plain = SequenceGenerator(3, history=2, ngf=8, n_downsample=2, n_blocks=2)
    assert set(spade.state_dict()) != set(plain.state_dict())


def test_the_hallucinated_output_is_returned_when_evaluating_and_the_composite_when_training():
    torch.manual_seed(0)
    blend = SequenceGenerator(3, history=2, ngf=8, n_downsample=2, n_blocks=2)
    alone = SequenceGenerator(3, history=2, ngf=8, n_downsample=2, n_blocks=2, output="hallucinated")
    alone.load_state_dict(blend.state_dict())  # the option adds no weight
    masks, previous, valid = torch.randn(1, 3, 3, 16, 16), torch.randn(1, 2, 1, 16, 16), torch.ones(1, 2)
    with torch.no_grad():
        evaluated = alone.eval()(masks, previous, valid)
        composite_out = blend.eval()(masks, previous, valid)
        assert torch.equal(evaluated.image, evaluated.hallucinated)
        assert torch.equal(evaluated.hallucinated, composite_out.hallucinated)
        assert (composite_out.image - composite_out.hallucinated).abs().max() > 1e-3  # a real previous slice blends in
        alone.train(), blend.train()
        trained, blended = alone(masks, previous, valid), blend(masks, previous, valid)
    assert torch.allclose(trained.image, blended.image)  # training sees the composite either way
    with pytest.raises(ValueError, match="output"):
        SequenceGenerator(3, output="warped")
