"""Mixed precision: one setting, ``precision``, for every trainer and generating stage, resolved per device.

``"auto"`` (every bundle's default) runs the networks under bfloat16 autocast on a CUDA device that supports it
and on a CPU with bfloat16 instructions (AVX512-BF16 or AMX), and in float32 elsewhere: a CPU without them
emulates bfloat16, which measured 15x slower than float32 for the MC-DPM's training step and 9x for the refiner's
on a 2-core AMD EPYC (AVX2 only), while a CPU with AVX512-BF16 measured 0.594 -> 0.358 s for the MC-DPM's step.
``"bf16"`` asks for bfloat16 autocast on any device, the CPU included (how the tests exercise the path). ``"fp16"``
is float16 autocast on CUDA with a gradient scaler in training (what the trainers' older ``amp`` switch did); it is
off on a CPU. ``"fp32"`` turns autocast off.

bfloat16 keeps float32's exponent range, so gradients neither underflow nor overflow and training needs no
gradient scaler; its 8-bit mantissa is coarse, so only the networks' forward passes run in it. Trainers compute
their losses under :meth:`~medgen3d.engines.base.StepTrainer.autocast`, whose loss functions autocast keeps in
float32; generating stages run inside :func:`autocast_networks`, which hands every floating network output back as
float32, so noise schedules, guidance, label decoding and saved volumes are computed in float32.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from medgen3d.data.io import SettingError

__all__ = [
    "PRECISIONS",
    "check_precision",
    "bf16_on_cpu",
    "autocast_dtype",
    "autocast",
    "autocast_networks",
    "MonaiAmp",
    "monai_amp",
]

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def check_precision(precision: str) -> str:
    """``precision`` itself when it is one of :data:`PRECISIONS`, else a :class:`SettingError` naming it."""
    if precision not in PRECISIONS:
        raise SettingError(f"precision: must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def _bf16_on_cuda(device: torch.device) -> bool:
    if not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def bf16_on_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles), as PyTorch's own CPU probe reports;
    ``False`` where the probe is missing."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype networks autocast to on ``device`` under ``precision``; ``None`` when autocast is off.

    Args:
        precision: one of :data:`PRECISIONS`.
        device: where the networks run.

    Returns:
        ``torch.bfloat16`` for ``"bf16"`` (any device) and for ``"auto"`` on a CUDA device or CPU with native
        bfloat16 (:func:`bf16_on_cpu`); ``torch.float16`` for ``"fp16"`` on CUDA; else ``None``.
    """
    device = torch.device(device)
    check_precision(precision)
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16 if device.type == "cuda" else None
    if precision == "auto" and device.type == "cuda" and _bf16_on_cuda(device):
        return torch.bfloat16
    if precision == "auto" and device.type == "cpu" and bf16_on_cpu():
        return torch.bfloat16
    return None


def autocast(dtype: torch.dtype | None, device: torch.device | str) -> torch.autocast:
    """``torch.autocast`` on ``device``'s type to ``dtype``, disabled when ``dtype`` is ``None``."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype or torch.get_autocast_dtype(device_type), enabled=dtype is not None)


def _float32(value: Any) -> Any:
    """``value`` with every floating tensor in it (also inside tuples, named tuples, lists, dicts) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_float32(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: _float32(v) for k, v in value.items()}
    return value


def _autocast_forward(forward: Callable, dtype: torch.dtype, device: torch.device) -> Callable:
    @functools.wraps(forward)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with autocast(dtype, device):
            outputs = forward(*args, **kwargs)
        return _float32(outputs)

    return wrapped


def _device(network: nn.Module) -> torch.device:
    parameter = next(network.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextlib.contextmanager
def autocast_networks(precision: str, *networks: nn.Module) -> Iterator[None]:
    """Within the block, each of ``networks`` runs its forward pass under autocast (:func:`autocast_dtype` of
    ``precision`` on the network's device) and returns its floating outputs as float32.

    Only the networks change precision: whatever the caller computes from their outputs (a scheduler step, guidance,
    an argmax, intensities to save) stays in float32. A network given twice is wrapped once; ``"fp32"``, or
    ``"auto"`` on a CPU without bfloat16 instructions, leaves every network as it is, and so does any callable that is
    not a module. The forwards are restored on exit.

    Args:
        precision: one of :data:`PRECISIONS`.
        networks: the generating stage's networks (on their devices).
    """
    check_precision(precision)
    wrapped: list[nn.Module] = []
    try:
        for network in {id(n): n for n in networks if isinstance(n, nn.Module)}.values():
            device = _device(network)
            dtype = autocast_dtype(precision, device)
            if dtype is None:
                continue
            # an instance attribute shadows the class's forward, as reuse_mask_modulation does for SPADE blocks
            network.forward = _autocast_forward(network.forward, dtype, device)
            wrapped.append(network)
        yield
    finally:
        for network in wrapped:
            del network.forward


class MonaiAmp(NamedTuple):
    """What MONAI's ``SupervisedTrainer`` and ``SupervisedEvaluator`` take: ``amp`` and ``amp_kwargs``."""

    amp: bool
    kwargs: dict


def monai_amp(precision: str, device: torch.device | str) -> MonaiAmp:
    """``precision`` as MONAI's engines' ``amp``/``amp_kwargs``.

    MONAI 1.6 autocasts with ``torch.autocast("cuda", **amp_kwargs)`` and always keeps a gradient scaler when ``amp``
    is on (harmless in bfloat16, needed in float16), so autocast is on only for a CUDA device: a CPU trains in
    float32 whatever the setting.
    """
    dtype = autocast_dtype(precision, device) if torch.device(device).type == "cuda" else None
    return MonaiAmp(dtype is not None, {"dtype": dtype} if dtype is not None else {})
