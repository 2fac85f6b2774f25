"""The vid2vid-style image sequence generator of MedGen3D (paper Sec. 3.2, after Wang et al. 2018).

Slice ``t`` of an image volume is made from the current and ``L`` previous mask slices and the ``L`` previous image
slices: the network hallucinates a new slice ``h_t``, predicts a flow ``w_t`` that carries the previous slice onto
the current one, and an occlusion weight ``m_t``; the slice is ``(1 - m_t) * warp(x_{t-1}, w_t) + m_t * h_t``.

vid2vid's generator passes everything through its bottleneck (``n_downsample`` levels down). With ``skips`` the
decoders also add the encoders' features of each level on the way up, as a U-Net does: no parameter more, and the
fine detail of the masks (a cortical ribbon two voxels thick) reaches the output without having to be relearned
from an 8×10 bottleneck. At the CPU preset's budget that gives sharper slices that match their masks better, but
speckled ones, farther from real in a segmenter's features (image_vid2vid's docs), so it is off by default.

With ``spade`` the current mask slice also reaches every decoder scale, as SPADE does (Park et al. 2019): each
upsampling normalises its features without learnt parameters and modulates them with a scale and shift predicted
from the mask at that scale. In vid2vid's own generator the layout enters once, through the encoders, and must
survive an 8×10 bottleneck; here a label that changes changes the output at every scale.

History slots before the start of a volume are marked invalid. The first slice has no valid history at all: its
occlusion weight is forced to 1, so it is pure hallucination, and the flow branch sees which slots are missing.
The generator is trained with truncated histories for exactly this case.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from monai.networks.blocks import SPADE, Convolution, Warp
from torch import nn

__all__ = ["GeneratorOutput", "warp_slice", "composite", "SequenceGenerator"]

# vid2vid scales its raw flow output so that a small activation can move many pixels
FLOW_SCALE = 20.0


OUTPUTS = ("composite", "hallucinated")  # what SequenceGenerator may return as its image when evaluating


class GeneratorOutput(NamedTuple):
    """One generated slice and its parts, each ``(B, C, H, W)``: ``image`` and ``hallucinated`` (1 channel),
    ``flow`` (2 channels: displacement in pixels along H then W), ``occlusion`` (1 channel, in [0, 1])."""

    image: torch.Tensor
    hallucinated: torch.Tensor
    flow: torch.Tensor
    occlusion: torch.Tensor


with warnings.catch_warnings():  # MONAI announces its fallback to torch's grid_sample, which is what we want
    warnings.simplefilter("ignore")
    _WARP = Warp(mode="bilinear", padding_mode="border")


def warp_slice(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Warp ``image`` ``(B, C, H, W)`` by the displacement ``flow`` ``(B, 2, H, W)`` (pixels, H then W).

    Output pixel ``p`` takes the value of ``image`` at ``p + flow(p)``; a zero flow returns the image.
    """
    return _WARP(image, flow)


def composite(previous: torch.Tensor, hallucinated: torch.Tensor, flow: torch.Tensor, occlusion: torch.Tensor):
    """``(1 - m) * warp(previous, flow) + m * h``: weight 1 gives the hallucinated slice, 0 the warped one."""
    return (1.0 - occlusion) * warp_slice(previous, flow) + occlusion * hallucinated


def _conv(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, transposed: bool = False) -> nn.Module:
    return Convolution(
        spatial_dims=2,
        in_channels=in_ch,
        out_channels=out_ch,
        kernel_size=kernel,
        strides=stride,
        norm="INSTANCE",
        act="RELU",
        is_transposed=transposed,
        output_padding=1 if transposed and stride > 1 else None,
    )


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels),
            Convolution(2, channels, channels, kernel_size=3, norm="INSTANCE", act=None, conv_only=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _encoder(in_ch: int, ngf: int, n_down: int, n_blocks: int) -> nn.Sequential:
    layers = [_conv(in_ch, ngf, kernel=7)]
    for i in range(n_down):
        layers.append(_conv(ngf * 2**i, ngf * 2 ** (i + 1), stride=2))
    layers += [_ResBlock(ngf * 2**n_down) for _ in range(n_blocks)]
    return nn.Sequential(*layers)


class _SpadeUp(nn.Module):
    """Stride-2 transposed convolution, then SPADE normalisation by the mask, then ReLU: the upsampling of a
    decoder with the layout re-injected at its output scale."""

    def __init__(self, in_ch: int, out_ch: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1)
        self.norm = SPADE(num_classes, out_ch, spatial_dims=2, hidden_channels=hidden, norm="INSTANCE")

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C_in, h, w)``, ``mask`` ``(B, K, H, W)`` (resized to ``2h x 2w`` inside) ->
        ``(B, C_out, 2h, 2w)``."""
        return torch.relu(self.norm(self.up(x), mask))


def _decoder(ngf: int, n_down: int, n_blocks: int, spade_classes: int = 0) -> nn.Sequential:
    """Residual blocks at the bottleneck, then ``n_down`` upsamplings; with ``spade_classes`` (``K`` > 0) each
    upsampling is a :class:`_SpadeUp` conditioned on the mask."""
    layers: list[nn.Module] = [_ResBlock(ngf * 2**n_down) for _ in range(n_blocks)]
    for i in range(n_down, 0, -1):
        if spade_classes:
            layers.append(_SpadeUp(ngf * 2**i, ngf * 2 ** (i - 1), spade_classes, hidden=ngf))
        else:
            layers.append(_conv(ngf * 2**i, ngf * 2 ** (i - 1), stride=2, transposed=True))
    return nn.Sequential(*layers)


def _encode(encoder: nn.Sequential, n_down: int, x: torch.Tensor) -> list[torch.Tensor]:
    """The features of every level of an :func:`_encoder`: ``ngf * 2**i`` channels at ``1 / 2**i`` of the size for
    ``i = 0 .. n_down``; the last (the bottleneck) is after the residual blocks."""
    levels = []
    for index, layer in enumerate(encoder):
        x = layer(x)
        if index < n_down:  # the stem (index 0) and the stride-2 convolutions before the last
            levels.append(x)
    return levels + [x]


def _decode(
    decoder: nn.Sequential, n_blocks: int, levels: list[torch.Tensor], skips: bool, mask: torch.Tensor
) -> torch.Tensor:
    """Run a :func:`_decoder` from the bottleneck ``levels[-1]``; with ``skips``, each upsampling's output gets the
    encoder features of its level added (their channels and sizes match by construction). ``mask`` ``(B, K, H, W)``
    is the current slice's layout, which SPADE upsamplings are conditioned on."""
    x = levels[-1]
    for index, layer in enumerate(decoder):
        x = layer(x, mask) if isinstance(layer, _SpadeUp) else layer(x)
        if skips and index >= n_blocks:
            x = x + levels[len(levels) - 2 - (index - n_blocks)]
    return x


class SequenceGenerator(nn.Module):
    """Generates one image slice from mask slices and previous image slices.

    Args:
        num_classes: ``K``, label values of the one-hot masks.
        history: ``L``, previous slices seen (default 2, as vid2vid's ``n_frames_G = 3``).
        ngf: channels after the first convolution; doubled at each downsampling.
        n_downsample: stride-2 levels; ``H`` and ``W`` must be divisible by ``2 ** n_downsample``.
        n_blocks: residual blocks, half in the encoders and half in each decoder branch.
        skips: add each encoder level's features to the decoders' (U-Net skips; see the module docstring). False is
            vid2vid's own generator; both have the same parameters, so either loads the other's weights.
        spade: condition every upsampling of both decoders on the current mask slice (SPADE; see the module
            docstring). False is vid2vid's generator, whose weights it does not load.
        output: the slice an evaluating generator returns as ``image``: ``"composite"`` (vid2vid's blend of the
            warped previous slice and the hallucinated one) or ``"hallucinated"`` (that slice alone; the bilinear
            warp of the blend softens thin structures). Training always returns the composite its losses are
            defined on, so the option changes no weight.
    """

    def __init__(
        self,
        num_classes: int,
        history: int = 2,
        ngf: int = 32,
        n_downsample: int = 3,
        n_blocks: int = 4,
        skips: bool = False,
        spade: bool = False,
        output: str = "composite",
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if history < 1:
            raise ValueError(f"history must be at least 1, got {history}")
        self.num_classes, self.history, self.n_downsample, self.skips = num_classes, history, n_downsample, skips
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.spade, self.output = spade, output
        spade_classes = num_classes if spade else 0
        self.size_multiple = 2**n_downsample  # both sides of a slice must be multiples of it
        shared, branch = n_blocks - n_blocks // 2, n_blocks // 2
        self.branch_blocks = branch
        # masks of the current and previous slices
        self.mask_encoder = _encoder((history + 1) * num_classes, ngf, n_downsample, shared)
        # previous images, their masks and one validity map per history slot
        self.history_encoder = _encoder(history * (num_classes + 2), ngf, n_downsample, shared)
        self.image_branch = nn.Sequential(
            _decoder(ngf, n_downsample, branch, spade_classes), nn.Conv2d(ngf, 1, 7, padding=3), nn.Tanh()
        )
        self.flow_branch = _decoder(ngf, n_downsample, branch, spade_classes)
        self.flow_head = nn.Conv2d(ngf, 2, 3, padding=1)
        self.occlusion_head = nn.Sequential(nn.Conv2d(ngf, 1, 3, padding=1), nn.Sigmoid())

    def forward(self, masks: torch.Tensor, previous: torch.Tensor, valid: torch.Tensor) -> GeneratorOutput:
        """Generate slice ``t``.

        Args:
            masks: ``(B, L + 1, K, H, W)`` one-hot masks of slices ``t - L .. t`` (current last), values in [-1, 1].
            previous: ``(B, L, 1, H, W)`` image slices ``t - L .. t - 1`` in [-1, 1]; invalid slots are ignored.
            valid: ``(B, L)``, 1 where the history slot exists (0 before the start of the volume).

        Returns:
            The composite slice and its parts.
        """
        b, _, k, h, w = masks.shape
        multiple = self.size_multiple
        if h % multiple or w % multiple:
            # caught here: otherwise the decoders' output or the skips' sum fails with a shape mismatch deep inside
            raise ValueError(
                f"slice size {h}x{w} does not fit the generator: both sides must be multiples of {multiple} "
                f"(2 ** n_downsample, n_downsample = {self.n_downsample})"
            )
        keep = valid.to(previous.dtype)[:, :, None, None, None]
        history = torch.cat([previous * keep, masks[:, :-1] * keep, keep.expand(b, self.history, 1, h, w)], dim=2)
        levels = [
            m + p
            for m, p in zip(
                _encode(self.mask_encoder, self.n_downsample, masks.reshape(b, -1, h, w)),
                _encode(self.history_encoder, self.n_downsample, history.reshape(b, -1, h, w)),
            )
        ]
        # image_branch is (decoder, output convolution, tanh)
        current = masks[:, -1]
        decoded = _decode(self.image_branch[0], self.branch_blocks, levels, self.skips, current)
        hallucinated = self.image_branch[1:](decoded)
        flow_features = _decode(self.flow_branch, self.branch_blocks, levels, self.skips, current)
        flow = self.flow_head(flow_features) * FLOW_SCALE
        # without the previous slice there is nothing to warp: the slice is hallucinated outright
        has_previous = valid[:, -1].to(previous.dtype)[:, None, None, None]
        occlusion = self.occlusion_head(flow_features) * has_previous + (1.0 - has_previous)
        if self.output == "hallucinated" and not self.training:
            image = hallucinated
        else:
            image = composite(previous[:, -1] * has_previous, hallucinated, flow, occlusion)
        return GeneratorOutput(image, hallucinated, flow, occlusion)
