"""Adapters that let bundle tools call networks whose forward needs more than one tensor.

MONAI's bundle tools (``verify_net_in_out``, ``ckpt_export``) build ``network_def`` and call it with one tensor
``rand(1, C, *spatial)``; ``ckpt_export`` also copies ``models/model.pt`` into it, with ignite's strict
``load_state_dict`` or with ``monai.networks.utils.copy_model_state`` (which silently skips every key that does not
match). ``models/model.pt`` holds the bare network's weights, so each adapter here is *state-dict transparent*: its
state dict is exactly the wrapped network's, key for key, and it loads the wrapped network's state dict strictly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["FixedConditionWrapper", "PackedSegmentationDenoiser", "PackedSequenceGenerator"]


class _StateDictTransparent(nn.Module):
    """A module that holds one network, as the attribute named ``inner_name``, and saves and loads as that network.

    Holding the network as a submodule prefixes its keys (``"network.conv_in.weight"``), which would not match
    ``model.pt``. State-dict hooks remove the prefix when saving and add it back when loading (a third names missing
    and unexpected keys without it, as the file has them), so the keys are the inner network's however deeply the
    adapter is nested: the hooks receive the adapter's own prefix. The adapter has no parameters or buffers of its
    own, so nothing else can collide with the inner keys. When loading, the inner modules find no version record
    under their prefixed names and load as from an unversioned state dict, as after ``copy_model_state``, which
    drops the records anyway; only legacy-format upgrades (BatchNorm's counter) consult them.

    Args:
        inner_name: attribute name of the wrapped network, kept for configs that read it.
        network: the wrapped network.
    """

    def __init__(self, inner_name: str, network: nn.Module) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise ValueError(f"{inner_name} must be an nn.Module, got {type(network).__name__}")
        self._inner_name = inner_name
        self.add_module(inner_name, network)
        self._loading_prefix = ""
        self.register_state_dict_post_hook(_drop_inner_prefix)
        self.register_load_state_dict_pre_hook(_add_inner_prefix)
        self.register_load_state_dict_post_hook(_report_inner_keys)


def _rename(mapping: dict[str, Any], old: str, new: str) -> None:
    """Replace the prefix ``old`` by ``new`` in the keys of ``mapping`` in place, keeping the keys' order (a
    state dict post-hook may only modify in place)."""
    items = list(mapping.items())
    mapping.clear()
    for key, value in items:
        mapping[new + key[len(old) :] if key.startswith(old) else key] = value


def _drop_inner_prefix(module: _StateDictTransparent, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    inner = f"{prefix}{module._inner_name}."
    _rename(state_dict, inner, prefix)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        # the inner network's root entry ("<prefix>network") replaces the adapter's own ("<prefix>" without dot),
        # so the versions recorded are the inner network's, as in its own state dict
        metadata[prefix[:-1]] = metadata.pop(inner[:-1], local_metadata)
        _rename(metadata, inner, prefix)


def _add_inner_prefix(
    module: _StateDictTransparent,
    state_dict: dict,
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    # runs before the children are loaded from this same dict, so they find their keys under the inner name
    module._loading_prefix = prefix
    _rename(state_dict, prefix, f"{prefix}{module._inner_name}.")


def _report_inner_keys(module: _StateDictTransparent, incompatible_keys: Any) -> None:
    """Missing and unexpected keys are named as in the file (without the inner name), so errors match it."""
    prefix = module._loading_prefix
    inner = f"{prefix}{module._inner_name}."
    for keys in (incompatible_keys.missing_keys, incompatible_keys.unexpected_keys):
        keys[:] = [prefix + key[len(inner) :] if key.startswith(inner) else key for key in keys]


class FixedConditionWrapper(_StateDictTransparent):
    """Calls ``network(x, timesteps, position)`` with a fixed timestep and position, so that single-input tools
    (``monai.bundle verify_net_in_out``, ``ckpt_export``) can run it.

    Input ``(B, m * (K + 1), H, W)`` and output ``(B, m * K, H, W)``, as the wrapped network's. Its state dict is the
    network's (see :class:`_StateDictTransparent`), so ``models/model.pt`` loads into it as it is.

    Args:
        network: an MC-DPM denoiser (:class:`~medgen3d.networks.MultiConditionDiffusionUNet`).
        timestep: diffusion step used for every item.
        position: relative position used for every item.
    """

    def __init__(self, network: nn.Module, timestep: int = 500, position: float = 0.5) -> None:
        super().__init__("network", network)
        if timestep < 0:
            raise ValueError(f"timestep must be non-negative, got {timestep}")
        self.timestep, self.position = timestep, position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # new_full keeps the batch size symbolic under torch.jit.trace
        timesteps = x.new_full((x.shape[0],), self.timestep, dtype=torch.long)
        return self.network(x, timesteps, x.new_full((x.shape[0],), self.position))


class PackedSequenceGenerator(_StateDictTransparent):
    """Calls a sequence generator on one packed tensor, every history slot valid, and returns the slice.

    Input ``(B, (L + 1) * K + L, H, W)``: the one-hot masks of slices ``t - L .. t``, then the ``L`` previous image
    slices. Output ``(B, 1, H, W)``. For single-input tools such as ``verify_net_in_out`` and ``ckpt_export``; its
    state dict is the generator's (see :class:`_StateDictTransparent`).

    Args:
        generator: a :class:`~medgen3d.networks.SequenceGenerator`.
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__("generator", generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        history, k = self.generator.history, self.generator.num_classes
        b, _, h, w = x.shape
        masks = x[:, : (history + 1) * k].reshape(b, history + 1, k, h, w)
        previous = x[:, (history + 1) * k :].reshape(b, history, 1, h, w)
        return self.generator(masks, previous, x.new_ones(b, history)).image


class PackedSegmentationDenoiser(_StateDictTransparent):
    """Calls a SPADE diffusion UNet on one packed tensor ``(B, 1 + K, H, W)`` (the noisy image, then the one-hot
    mask) at a fixed timestep; output ``(B, 1, H, W)``. For single-input tools such as ``verify_net_in_out`` and
    ``ckpt_export``; its state dict is the UNet's (see :class:`_StateDictTransparent`).

    Args:
        network: a ``SPADEDiffusionModelUNet`` with one input channel and ``label_nc = K``.
        timestep: diffusion step used for every item.
    """

    def __init__(self, network: nn.Module, timestep: int = 5) -> None:
        super().__init__("network", network)
        if timestep < 0:
            raise ValueError(f"timestep must be non-negative, got {timestep}")
        self.timestep = timestep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        timesteps = x.new_full((x.shape[0],), self.timestep, dtype=torch.long)
        return self.network(x[:, :1], timesteps, seg=x[:, 1:])
