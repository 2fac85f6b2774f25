"""Loss terms of the image sequence generator, registered by name and weighted from config (vid2vid Sec. 3).

The trainer computes each term it needs into a ``{name: tensor}`` mapping; :class:`WeightedLosses` checks the names
against :data:`LOSS_TERMS`, sums the terms with their weights and keeps every term for logging by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from monai.losses import DiffusionLoss, PatchAdversarialLoss
from torch import nn

from medgen3d.networks.sequence_generator import warp_slice
from medgen3d.torchscript import load_torchscript

__all__ = [
    "LOSS_TERMS",
    "WeightedLosses",
    "AdversarialTerms",
    "feature_matching_loss",
    "warp_loss",
    "flow_smoothness_loss",
    "LocalPerceptualLoss",
]

# Generator terms, by the names used in configs and logs.
LOSS_TERMS = (
    "gan",  # image discriminator, per slice
    "feature_matching",  # L1 between image-discriminator features of real and generated slices
    "temporal_gan",  # temporal discriminator, per run of consecutive slices
    "temporal_feature_matching",
    "warp",  # self-supervised flow: warp(real slice t-1, flow_t) should be real slice t
    "flow_smoothness",  # first-derivative penalty on the flow
    "l1",  # L1 between generated and real slices
    "hallucinated_l1",  # L1 between the hallucinated slice h_t and the real slice: label -> intensity, not the blend
    "perceptual",  # L1 between features of a user-supplied local network; off unless weights are given
)


class WeightedLosses:
    """Weights per loss name; sums named terms into the generator loss.

    Args:
        weights: ``{name: weight}`` over :data:`LOSS_TERMS`; names not given weigh 0.
    """

    def __init__(self, weights: Mapping[str, float]) -> None:
        unknown = sorted(set(weights) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"unknown loss names {unknown}; the registered losses are {list(LOSS_TERMS)}")
        self.weights = {name: float(weights.get(name, 0.0)) for name in LOSS_TERMS}

    def active(self, name: str) -> bool:
        """Whether term ``name`` counts (its weight is not 0), so the trainer can skip computing it."""
        return self.weights[name] != 0.0

    def total(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``sum(weight[name] * term)`` over the given terms."""
        unknown = sorted(set(terms) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"unknown loss names {unknown}")
        return sum(self.weights[name] * value for name, value in terms.items() if self.active(name))


class AdversarialTerms:
    """GAN losses over multi-scale discriminator outputs (logits last in each scale's list).

    Args:
        criterion: ``"least_squares"`` (vid2vid's effective default) or ``"hinge"``.
    """

    def __init__(self, criterion: str = "least_squares") -> None:
        if criterion not in ("least_squares", "hinge"):
            raise ValueError(f"criterion must be 'least_squares' or 'hinge', got {criterion!r}")
        self.loss = PatchAdversarialLoss(criterion=criterion, reduction="mean")

    def generator(self, fake: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        """The generator wants its outputs judged real."""
        return self.loss([scale[-1] for scale in fake], target_is_real=True, for_discriminator=False)

    def discriminator(self, real: Sequence[Sequence[torch.Tensor]], fake: Sequence[Sequence[torch.Tensor]]):
        """Half the sum of the real and fake terms (``fake`` computed on detached generator outputs)."""
        real_term = self.loss([scale[-1] for scale in real], target_is_real=True, for_discriminator=True)
        fake_term = self.loss([scale[-1] for scale in fake], target_is_real=False, for_discriminator=True)
        return 0.5 * (real_term + fake_term)


def feature_matching_loss(fake: Sequence[Sequence[torch.Tensor]], real: Sequence[Sequence[torch.Tensor]]):
    """Mean L1 between intermediate discriminator features of generated and (detached) real inputs."""
    terms = [
        torch.mean(torch.abs(f - r.detach()))
        for fake_scale, real_scale in zip(fake, real)
        for f, r in zip(fake_scale[:-1], real_scale[:-1])
    ]
    return torch.stack(terms).mean()


def warp_loss(flow: torch.Tensor, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """L1 between the previous real slice warped by ``flow`` and the current real slice: the flow learns the
    slice-to-slice motion from real data alone (no pretrained flow network)."""
    return torch.mean(torch.abs(warp_slice(previous, flow) - current))


_SMOOTHNESS = DiffusionLoss()  # flows are in pixels, so no normalisation by image size


def flow_smoothness_loss(flow: torch.Tensor) -> torch.Tensor:
    """MONAI's diffusion regulariser (squared first derivatives) of the flow ``(B, 2, H, W)``."""
    return _SMOOTHNESS(flow)


class LocalPerceptualLoss(nn.Module):
    """L1 between features of a locally stored network, for users who have such weights.

    Args:
        weights_path: a TorchScript file whose module maps ``(B, 1, H, W)`` images to a tensor or a list of
            feature tensors. Nothing is downloaded.

    Raises:
        TorchScriptNotFoundError: no file at ``weights_path`` (a ``FileNotFoundError``, and a ``DataError``).
        DataError: the file is not TorchScript.
    """

    def __init__(self, weights_path: str | os.PathLike) -> None:
        super().__init__()
        self.features = load_torchscript(weights_path, "perceptual-loss network")
        for parameter in self.features.parameters():
            parameter.requires_grad_(False)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake_features, real_features = self.features(fake), self.features(real)
        if isinstance(fake_features, torch.Tensor):
            fake_features, real_features = [fake_features], [real_features]
        return torch.stack([torch.mean(torch.abs(f - r.detach())) for f, r in zip(fake_features, real_features)]).mean()
