"""Every StepTrainer trains under bfloat16 autocast when asked (forced on a CPU here; "auto" turns it on for CUDA and
for CPUs with bfloat16 instructions)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.networks.schedulers import DDPMScheduler

from medgen3d.engines.mcdpm_trainer import MCDPMTrainer
from medgen3d.engines.sdm_trainer import SemanticDiffusionTrainer
from medgen3d.engines.sequence_trainer import SequenceGANTrainer
from medgen3d.networks import ImageDiscriminator, SequenceGenerator, TemporalDiscriminator
from medgen3d.precision import autocast_dtype
from tests.conftest import random_mcdpm, slab_label, tiny_spade
from tests.engines.test_sequence_trainer import WEIGHTS

ITERATIONS = 3


def _conv_dtypes(network: torch.nn.Module) -> list[torch.dtype]:
    """The output dtypes of ``network``'s first convolution, one per forward pass."""
    conv = next(m for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
    seen: list[torch.dtype] = []
    conv.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    return seen


def _losses(trainer, keys: tuple[str, ...]) -> list[dict[str, float]]:
    logged: list[dict[str, float]] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: logged.append({k: float(e.state.output[k]) for k in keys})
    )
    trainer.run()
    return logged


def _check(logged, seen, precision):
    assert len(logged) == ITERATIONS
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in logged), logged
    expected = autocast_dtype(precision, "cpu") or torch.float32  # "auto": bfloat16 on a CPU with its instructions
    assert set(seen) == {expected}


def _mcdpm(precision: str, **kwargs) -> MCDPMTrainer:
    label = torch.from_numpy(slab_label((8, 8, 12))).long()
    batch = [{"label": label[None, ..., s : s + 4], "position": torch.tensor(s / 12)} for s in range(8)]
    network = random_mcdpm(4, 4).train()
    return MCDPMTrainer(
        "cpu",
        ITERATIONS,
        torch.utils.data.DataLoader(batch, batch_size=4),
        network,
        torch.optim.AdamW(network.parameters(), 1e-3),
        DDPMScheduler(100, prediction_type="sample"),
        4,
        {"forward": 0.4, "backward": 0.4, "unconditional": 0.2},
        (2, 3),
        dice_weight=1.0,
        precision=precision,
        **kwargs,
    )


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_mcdpm_trainer(precision):
    trainer = _mcdpm(precision)
    seen = _conv_dtypes(trainer.network)
    _check(_losses(trainer, ("loss", "regression", "dice")), seen, precision)
    assert trainer.scaler is None  # bfloat16 needs no gradient scaler


def test_the_older_amp_switch_is_float16_on_cuda_only():
    trainer = _mcdpm("auto", amp=True)
    assert trainer.precision == "fp16" and trainer.autocast_dtype is None and not trainer.amp  # a CPU: off


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_semantic_diffusion_trainer(precision):
    label = torch.from_numpy(slab_label((16, 16, 8))).long()
    slices = [{"image": label[None, :, :, k].float() / 3 * 2 - 1, "label": label[None, :, :, k]} for k in range(8)]
    network = tiny_spade(4)
    trainer = SemanticDiffusionTrainer(
        "cpu",
        ITERATIONS,
        torch.utils.data.DataLoader(slices, batch_size=4),
        network,
        torch.optim.AdamW(network.parameters(), 1e-3),
        DDPMScheduler(1000),
        4,
        precision=precision,
    )
    seen = _conv_dtypes(network)
    _check(_losses(trainer, ("loss",)), seen, precision)


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_sequence_gan_trainer(precision):
    label = torch.from_numpy(slab_label((16, 16, 8))).long()
    image = label.float() / 3 * 2 - 1
    runs = [{"image": image[None, ..., s : s + 6], "label": label[None, ..., s : s + 6]} for s in range(3)]
    generator = SequenceGenerator(4, ngf=8, n_downsample=2, n_blocks=2)
    image_d, temporal_d = ImageDiscriminator(4, 1, 8, 2), TemporalDiscriminator(3, 1, 8, 2)
    adam = lambda params: torch.optim.Adam(params, 2e-4, betas=(0.5, 0.999))  # noqa: E731
    trainer = SequenceGANTrainer(
        "cpu",
        ITERATIONS,
        torch.utils.data.DataLoader(runs, batch_size=3),
        generator,
        adam(generator.parameters()),
        image_d,
        temporal_d,
        adam([*image_d.parameters(), *temporal_d.parameters()]),
        4,
        WEIGHTS,
        precision=precision,
    )
    seen, seen_d = _conv_dtypes(generator), _conv_dtypes(image_d)
    _check(_losses(trainer, ("loss", "d_loss", "gan", "l1", "warp", "temporal_gan")), seen + seen_d, precision)
    with pytest.raises(ValueError, match="precision: 'fp16' needs a gradient scaler per optimiser"):
        SequenceGANTrainer("cpu", 1, [], generator, None, image_d, temporal_d, None, 4, WEIGHTS, precision="fp16")
