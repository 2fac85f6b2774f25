from __future__ import annotations

import pytest
import torch

from medgen3d.engines.sequence_trainer import SequenceGANTrainer
from medgen3d.networks import ImageDiscriminator, SequenceGenerator, TemporalDiscriminator
from medgen3d.synthesis.images import generate_image_volumes
from tests.conftest import slab_label

WEIGHTS = {
    "gan": 1,
    "feature_matching": 10,
    "temporal_gan": 1,
    "temporal_feature_matching": 10,
    "warp": 10,
    "flow_smoothness": 0.1,
    "l1": 10,
}


def _label_intensity_error(generator, label, image, num_classes):
    [fake] = generate_image_volumes(generator.eval(), [label.permute(2, 0, 1)], num_classes)
    fake = fake.permute(1, 2, 0)
    return torch.stack([(fake[label == k].mean() - image[label == k].mean()).abs() for k in range(num_classes)]).mean()


def _trainer(generator, data, iterations, weights=WEIGHTS):
    image_d, temporal_d = ImageDiscriminator(4, 1, 8, 2), TemporalDiscriminator(3, 1, 8, 2)
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)
    adam = lambda params: torch.optim.Adam(params, 2e-3, betas=(0.5, 0.999))  # noqa: E731
    return SequenceGANTrainer(
        "cpu",
        iterations,
        loader,
        generator,
        adam(generator.parameters()),
        image_d,
        temporal_d,
        adam([*image_d.parameters(), *temporal_d.parameters()]),
        4,
        weights,
    )


def _runs(label, image, length=6):
    return [
        {"image": image[None, ..., s : s + length], "label": label[None, ..., s : s + length]}
        for s in range(label.shape[-1] - length + 1)
    ]


@pytest.mark.slow
def test_short_training_learns_an_intensity_that_is_a_function_of_the_label():
    torch.manual_seed(0)
    label = torch.from_numpy(slab_label((16, 16, 12))).long()
    image = label.float() / 3 * 2 - 1  # background -1, slabs -1/3, 1/3, 1
    generator = SequenceGenerator(4, ngf=8, n_downsample=2, n_blocks=2)
    untrained = _label_intensity_error(generator, label, image, 4)
    trainer = _trainer(generator, _runs(label, image), iterations=80)  # 40 passes over 7 runs in batches of 4
    trainer.run()
    trained = _label_intensity_error(generator, label, image, 4)
    print(f"per-label mean intensity error: untrained {untrained:.3f}, trained {trained:.3f}")
    assert trained < 0.5 * untrained
    output = trainer.state.output
    assert {"loss", "d_loss", "gan", "l1", "warp", "temporal_gan"} <= set(output)  # logged by name


def test_perceptual_weight_without_a_network_is_refused():
    generator = SequenceGenerator(4, ngf=8, n_downsample=2, n_blocks=2)
    with pytest.raises(ValueError, match="no perceptual network was given"):
        _trainer(generator, [{}], 1, {**WEIGHTS, "perceptual": 1.0})


def test_truncated_histories_cover_every_length():
    generator = SequenceGenerator(4, history=3, ngf=8, n_downsample=2, n_blocks=2)
    trainer = _trainer(generator, [{}], 1)
    trainer.p_truncate = 1.0
    valid = trainer._history_validity(400, torch.device("cpu"))
    kept = valid.sum(1)
    assert set(kept.tolist()) == {0.0, 1.0, 2.0}  # every truncated length, never the full history
    assert all(row[3 - int(n) :].all() and not row[: 3 - int(n)].any() for row, n in zip(valid, kept))  # newest kept


class _Constant(torch.nn.Module):
    """A generator whose every slice is one value, to see what the trainer feeds back."""

    history = 2

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(value))
        self.seen: list[torch.Tensor] = []

    def forward(self, masks, previous, valid):
        from medgen3d.networks.sequence_generator import GeneratorOutput

        self.seen.append(previous.clone())
        b, _, _, h, w = masks.shape
        image = self.value.expand(b, 1, h, w)
        return GeneratorOutput(image, image, torch.zeros(b, 2, h, w), torch.ones(b, 1, h, w))


def test_own_history_feeds_the_generators_slices_and_real_history_the_real_ones():
    generator = SequenceGenerator(4, ngf=8, n_downsample=2, n_blocks=2)
    trainer = _trainer(generator, [{}], 1)
    masks = torch.randn(3, 8, 4, 16, 16)
    images = torch.rand(3, 8, 1, 16, 16)
    constant = _Constant(0.25)
    trainer.p_own_history = 1.0
    history = trainer._history_images(constant, masks, images)
    assert torch.equal(history, torch.full_like(images[:, :2], 0.25))  # the constant, never the real slices
    # the first own slice starts the volume: no valid history, nothing but zeros to see
    assert torch.equal(constant.seen[0], torch.zeros_like(images[:, :2]))
    trainer.p_own_history = 0.0
    assert torch.equal(trainer._history_images(constant, masks, images), images[:, :2])
    # every generated slice of the run then sees the slices generated before it
    constant.seen.clear()
    trainer._generate(constant, masks, torch.full_like(images[:, :2], 0.25), torch.ones(3, 2))
    assert all(torch.equal(seen, torch.full_like(images[:, :2], 0.25)) for seen in constant.seen)
    with pytest.raises(ValueError, match="p_own_history"):
        SequenceGANTrainer("cpu", 1, [{}], generator, None, None, None, None, 4, WEIGHTS, p_own_history=1.5)


def test_hallucinated_loss_is_zero_for_a_perfect_hallucination_and_grows_with_a_wrong_intensity():
    generator = SequenceGenerator(4, ngf=8, n_downsample=2, n_blocks=2)
    trainer = _trainer(generator, [{}], 1, {**WEIGHTS, "hallucinated_l1": 10})
    masks = torch.randn(2, 5, 4, 16, 16)
    images = torch.full((2, 5, 1, 16, 16), 0.5)
    errors = []
    for value in (0.5, 0.3, -0.5):
        outputs = trainer._generate(_Constant(value), masks, images[:, :2], torch.ones(2, 2))
        terms = trainer._generator_terms(masks, images, torch.ones(2, 2), outputs)
        errors.append(terms["hallucinated_l1"].item())
    assert errors[0] == 0.0
    assert errors[1] == pytest.approx(0.2) and errors[2] == pytest.approx(1.0)
