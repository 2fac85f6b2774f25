"""Adversarial trainer of the image sequence generator (MedGen3D Sec. 3.2, vid2vid losses)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from medgen3d.diffusion.conditions import one_hot_slices
from medgen3d.engines.base import StepTrainer
from medgen3d.engines.distributed import average_gradients, broadcast_parameters
from medgen3d.losses.sequence import (
    AdversarialTerms,
    WeightedLosses,
    feature_matching_loss,
    flow_smoothness_loss,
    warp_loss,
)
from medgen3d.networks.discriminators import ImageDiscriminator, TemporalDiscriminator
from medgen3d.networks.sequence_generator import GeneratorOutput, SequenceGenerator

__all__ = ["SequenceGANTrainer"]


class SequenceGANTrainer(StepTrainer):
    """Trains a :class:`SequenceGenerator` against an image and a temporal discriminator.

    Each batch holds runs of ``L + T`` consecutive real slices: ``"image"`` ``(B, 1, H, W, L + T)`` in [-1, 1]
    and ``"label"`` ``(B, 1, H, W, L + T)`` integer masks. The first ``L`` slices are the history of the first
    generated slice; with probability ``p_truncate`` an item's history is cut to fewer slots (none for the first
    slice of a volume), which teaches the generator to start a volume. With probability ``p_own_history`` an
    item's history is the generator's own: its first ``L`` slices generated (without gradients) from the run's
    masks alone, as inference starts a volume, so training sees the slices inference feeds back rather than real
    ones (exposure bias; vid2vid likewise trains on its own previous frames). The ``T`` slices are generated in
    order, each seeing the ones generated before it (detached, as in vid2vid). ``engine.state.output`` holds
    ``"loss"`` (generator), ``"d_loss"`` and every generator term by name.

    Args:
        device, max_iterations, train_data_loader: as :class:`StepTrainer`.
        network: the generator.
        optimizer: the generator's optimiser.
        image_discriminator, temporal_discriminator: the discriminators.
        d_optimizer: one optimiser over both discriminators' parameters.
        num_classes: ``K``.
        loss_weights: ``{name: weight}`` (see :data:`medgen3d.losses.sequence.LOSS_TERMS`).
        gan_criterion: ``"least_squares"`` or ``"hinge"``.
        p_truncate: probability of a truncated history.
        p_own_history: probability that an item's history is the generator's own slices instead of real ones.
        perceptual: optional feature loss module ``(fake, real) -> loss`` (weight ``"perceptual"``).
        train_handlers: as :class:`StepTrainer`.
        precision: ``"auto"``, ``"bf16"`` or ``"fp32"`` (see :class:`StepTrainer`); not ``"fp16"``, which would need
            a gradient scaler per optimiser.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_iterations: int,
        train_data_loader: Iterable | DataLoader,
        network: SequenceGenerator,
        optimizer: torch.optim.Optimizer,
        image_discriminator: ImageDiscriminator,
        temporal_discriminator: TemporalDiscriminator,
        d_optimizer: torch.optim.Optimizer,
        num_classes: int,
        loss_weights: dict[str, float],
        gan_criterion: str = "least_squares",
        p_truncate: float = 0.2,
        p_own_history: float = 0.0,
        perceptual: torch.nn.Module | None = None,
        train_handlers: Sequence | None = None,
        precision: str = "auto",
    ) -> None:
        if precision == "fp16":
            raise ValueError("precision: 'fp16' needs a gradient scaler per optimiser; use 'bf16' (or 'auto')")
        super().__init__(
            device, max_iterations, train_data_loader, network, optimizer, train_handlers, precision=precision
        )
        self.image_discriminator = image_discriminator
        self.temporal_discriminator = temporal_discriminator
        self.d_optimizer = d_optimizer
        self.num_classes = num_classes
        self.losses = WeightedLosses(loss_weights)
        self.adversarial = AdversarialTerms(gan_criterion)
        if not 0.0 <= p_own_history <= 1.0:
            raise ValueError(f"p_own_history must lie in [0, 1], got {p_own_history}")
        self.p_truncate = p_truncate
        self.p_own_history = p_own_history
        self.perceptual = perceptual
        if self.losses.active("perceptual") and perceptual is None:
            raise ValueError("loss weight 'perceptual' is set but no perceptual network was given")
        # under torchrun every process starts from rank 0's weights and averages gradients each step
        broadcast_parameters([network, image_discriminator, temporal_discriminator])

    @property
    def history(self) -> int:
        generator = self.network.module if hasattr(self.network, "module") else self.network
        return generator.history

    def _iteration(self, engine: "SequenceGANTrainer", batchdata: dict[str, Any]) -> dict[str, torch.Tensor]:
        device = engine.state.device
        # (B, S, 1, H, W) images and (B, S, K, H, W) one-hot masks, slices first
        images = self.batch_tensor(batchdata, "image", device).float().permute(0, 4, 1, 2, 3)
        labels = self.batch_tensor(batchdata, "label", device)[:, 0].permute(0, 3, 1, 2)
        masks = one_hot_slices(labels, self.num_classes)
        valid = self._history_validity(images.shape[0], device)
        engine.network.train()
        # 1. generate the run, slice by slice, after a history that is real or the generator's own
        with engine.autocast():
            history = self._history_images(engine.network, masks, images)
            outputs = self._generate(engine.network, masks, history, valid)
        # 2. discriminator step on detached slices, 3. generator step
        d_loss = self._discriminator_step(masks, images, outputs)
        with engine.autocast():
            terms = self._generator_terms(masks, images, valid, outputs)
            loss = self.losses.total(terms)
        engine.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(engine.network.parameters())
        engine.optimizer.step()
        engine.state.output = {
            "loss": loss.detach(),
            "d_loss": d_loss.detach(),
            **{k: v.detach() for k, v in terms.items()},
        }
        return engine.state.output

    def _history_validity(self, batch: int, device: torch.device) -> torch.Tensor:
        """``(B, L)``: all ones, except that a fraction ``p_truncate`` of items keep only their newest ``v`` slots,
        ``v`` uniform in ``[0, L - 1]``."""
        history = self.history
        valid = torch.ones(batch, history, device=device)
        truncate = torch.rand(batch) < self.p_truncate
        kept = torch.randint(0, history, (batch,))
        for i in torch.nonzero(truncate).flatten().tolist():
            valid[i, : history - int(kept[i])] = 0.0
        return valid

    def _history_images(self, generator, masks: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``(B, L, 1, H, W)``: the real first ``L`` slices of the run, except for a fraction ``p_own_history`` of
        items, whose history the generator makes itself, from slice 0 of the run as if it began the volume."""
        history = self.history
        own = torch.rand(images.shape[0]) < self.p_own_history
        if not own.any():
            return images[:, :history]
        b, _, k, h, w = masks.shape
        previous = torch.zeros_like(images[:, :history])
        slots = torch.zeros(b, history, device=images.device)
        with torch.no_grad():
            for t in range(history):
                # slots before slice 0 of the run are empty, as before the first slice of a volume
                window = torch.cat([masks.new_zeros(b, history - t, k, h, w), masks[:, : t + 1]], dim=1)
                out = generator(window, previous, slots)
                previous = torch.cat([previous[:, 1:], out.image.float()[:, None]], dim=1)
                slots = torch.cat([slots[:, 1:], torch.ones_like(slots[:, :1])], dim=1)
        keep = own.to(images.device)[:, None, None, None, None]
        return torch.where(keep, previous, images[:, :history])

    def _generate(self, generator, masks, history_images, valid) -> list[GeneratorOutput]:
        """Generate slices ``L .. L + T - 1`` of the run after ``history_images`` ``(B, L, 1, H, W)``."""
        history = self.history
        previous, slots = history_images, valid
        outputs = []
        for t in range(history, masks.shape[1]):
            out = generator(masks[:, t - history : t + 1], previous, slots)
            outputs.append(out)
            # vid2vid detaches the slices it feeds back
            previous = torch.cat([previous[:, 1:], out.image.detach()[:, None]], dim=1)
            slots = torch.cat([slots[:, 1:], torch.ones_like(slots[:, :1])], dim=1)
        return outputs

    def _frames(self, masks, images, outputs, detach: bool):
        history = self.history
        fake = torch.stack([o.image for o in outputs], dim=1)
        fake = fake.detach() if detach else fake
        b, t = fake.shape[:2]
        flat = lambda x: x.reshape(b * t, *x.shape[2:])  # noqa: E731
        return flat(masks[:, history:]), flat(images[:, history:]), flat(fake), fake

    def _temporal_runs(self, images, fake, outputs):
        """One random run of ``F`` consecutive slices per item: real, generated, and the generator's flows."""
        frames = self.temporal_discriminator.num_frames
        start = int(torch.randint(0, fake.shape[1] - frames + 1, (1,)))
        real = images[:, self.history + start : self.history + start + frames, 0]
        flows = torch.cat([outputs[start + i].flow.detach() for i in range(1, frames)], dim=1)
        return real, fake[:, start : start + frames, 0], flows

    @staticmethod
    def _judge(discriminator, real: tuple, fake: tuple) -> tuple[list, list]:
        """One forward over real and fake inputs together, split back into the two halves."""
        joined = discriminator(*(torch.cat([r, f]) for r, f in zip(real, fake)))
        half = real[0].shape[0]
        return [[x[:half] for x in scale] for scale in joined], [[x[half:] for x in scale] for scale in joined]

    def _discriminator_step(self, masks, images, outputs) -> torch.Tensor:
        mask, real, fake, fake_run = self._frames(masks, images, outputs, detach=True)
        with self.autocast():
            loss = self.adversarial.discriminator(*self._judge(self.image_discriminator, (mask, real), (mask, fake)))
            if self.losses.active("temporal_gan"):
                real_run, fake_run, flows = self._temporal_runs(images, fake_run, outputs)
                loss = loss + self.adversarial.discriminator(
                    *self._judge(self.temporal_discriminator, (real_run, flows), (fake_run, flows))
                )
        self.d_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(p for group in self.d_optimizer.param_groups for p in group["params"])
        self.d_optimizer.step()
        return loss

    def _generator_terms(self, masks, images, valid, outputs) -> dict[str, torch.Tensor]:
        mask, real, fake, fake_run = self._frames(masks, images, outputs, detach=False)
        fake_scores = self.image_discriminator(mask, fake)
        with torch.no_grad():
            real_scores = self.image_discriminator(mask, real)
        terms = {"gan": self.adversarial.generator(fake_scores), "l1": torch.mean(torch.abs(fake - real))}
        if self.losses.active("hallucinated_l1"):
            # the hallucinated slice alone, where the blend would let a warped previous slice hide a wrong intensity
            hallucinated = torch.stack([o.hallucinated for o in outputs], dim=1).flatten(0, 1)
            terms["hallucinated_l1"] = torch.mean(torch.abs(hallucinated - real))
        if self.losses.active("feature_matching"):
            terms["feature_matching"] = feature_matching_loss(fake_scores, real_scores)
        if self.losses.active("temporal_gan") or self.losses.active("temporal_feature_matching"):
            real_run, fake_run, flows = self._temporal_runs(images, fake_run, outputs)
            fake_t = self.temporal_discriminator(fake_run, flows)
            terms["temporal_gan"] = self.adversarial.generator(fake_t)
            with torch.no_grad():
                real_t = self.temporal_discriminator(real_run, flows)
            terms["temporal_feature_matching"] = feature_matching_loss(fake_t, real_t)
        # the flow learns slice-to-slice motion from the real slices: warp(real t-1) ~ real t
        history = self.history
        flows = torch.cat([o.flow for o in outputs[1:]])
        previous = torch.cat([images[:, t - 1] for t in range(history + 1, images.shape[1])])
        current = torch.cat([images[:, t] for t in range(history + 1, images.shape[1])])
        if outputs[0].flow.shape[0] and valid[:, -1].any():  # the first slice too, where it has a previous one
            has_previous = valid[:, -1].bool()
            flows = torch.cat([outputs[0].flow[has_previous], flows])
            previous = torch.cat([images[has_previous, history - 1], previous])
            current = torch.cat([images[has_previous, history], current])
        if flows.shape[0]:
            terms["warp"] = warp_loss(flows, previous, current)
            terms["flow_smoothness"] = flow_smoothness_loss(flows)
        if self.perceptual is not None and self.losses.active("perceptual"):
            terms["perceptual"] = self.perceptual(fake, real)
        return terms
