"""One 2D semantic diffusion network per view, kept together so that a bundle ships one ``models/model.pt``.

The semantic diffusion refiner trains one SPADE diffusion UNet per view (axial, coronal, sagittal), each run
writing its own weights; the model zoo expects one ``models/model.pt`` per bundle, loadable into ``network_def`` by
``ckpt_export``. :class:`ViewDenoisers` is that one module: its state dict holds every view's weights under the
view's name (``"axial.conv_in.conv.weight"``), and ``denoisers[view]`` is the view's network, for the refiner.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from medgen3d.views import check_views

__all__ = ["ViewDenoisers"]


class ViewDenoisers(nn.ModuleDict):
    """One copy of a SPADE diffusion UNet per view, keyed by view name.

    ``denoisers[view]`` is that view's network (what :class:`~medgen3d.diffusion.refiner.SemanticRefiner` runs);
    the state dict keys are ``"<view>.<key of the network>"``. Each copy starts with ``network``'s weights.

    :meth:`forward` exists only for single-input bundle tools (``verify_net_in_out``, ``ckpt_export``), which call
    ``network_def`` with one tensor: it is not a refinement (that noises and denoises slices along each view's own
    axis, see :func:`~medgen3d.diffusion.refiner.refine_volume`).

    Args:
        network: the SPADE diffusion UNet, ``(x (B, 1, H, W), t (B,), seg (B, K, H, W)) -> (B, 1, H, W)``; deep
            copied once per view.
        views: view names, each one of :data:`~medgen3d.views.VIEWS`, without repeats; ``None`` for all of them.
        timestep: the diffusion step :meth:`forward` uses for every item.
    """

    def __init__(self, network: nn.Module, views: Sequence[str] | None = None, timestep: int = 5) -> None:
        if not isinstance(network, nn.Module):
            raise ValueError(f"network must be an nn.Module, got {type(network).__name__}")
        if timestep < 0:
            raise ValueError(f"timestep must be non-negative, got {timestep}")
        super().__init__({view: copy.deepcopy(network) for view in check_views(views)})
        self.timestep = timestep

    @property
    def views(self) -> tuple[str, ...]:
        """The view names, in construction order."""
        return tuple(self.keys())

    def __getitem__(self, view: str) -> nn.Module:
        if view not in self:
            raise KeyError(f"no network for view {view!r}; these hold {list(self.keys())}")
        return super().__getitem__(view)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of the views' predictions on one packed tensor, for single-input tools only.

        Args:
            x: ``(B, 1 + K, H, W)``: the noisy slice, then the ``K`` one-hot mask channels.

        Returns:
            ``(B, 1, H, W)``: the views' noise predictions at step ``timestep``, averaged.
        """
        image, seg = x[:, :1], x[:, 1:]
        timesteps = x.new_full((x.shape[0],), self.timestep, dtype=torch.long)
        return torch.stack([network(image, timesteps, seg=seg) for network in self.values()]).mean(dim=0)
