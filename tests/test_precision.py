"""One precision setting, resolved per device: bfloat16 autocast on CUDA and on CPUs with bfloat16 instructions by
default, float32 on other CPUs unless asked."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

import medgen3d.precision as precision_module
from medgen3d.data.io import SettingError
from medgen3d.precision import autocast_dtype, autocast_networks, monai_amp

CUDA = torch.device("cuda")  # resolved, never used: no CUDA call is made for these settings


class _Pair(NamedTuple):
    image: torch.Tensor
    index: torch.Tensor


class _TwoOutputs(torch.nn.Module):
    """A linear layer whose output travels in a named tuple beside an integer tensor, recording its compute dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)
        self.computed: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> _Pair:
        y = self.linear(x)
        self.computed.append(y.dtype)
        return _Pair(y, torch.arange(3))


def test_auto_on_a_cpu_is_bf16_only_with_bf16_instructions(monkeypatch):
    assert autocast_dtype("auto", "cpu") == (torch.bfloat16 if precision_module.bf16_on_cpu() else None)
    monkeypatch.setattr(precision_module, "bf16_on_cpu", lambda: True)
    assert autocast_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(precision_module, "bf16_on_cpu", lambda: False)
    assert autocast_dtype("auto", "cpu") is None
    assert autocast_dtype("fp32", "cpu") is None  # an explicit setting wins either way


def test_each_setting_resolves_as_documented(monkeypatch):
    monkeypatch.setattr(precision_module, "bf16_on_cpu", lambda: False)  # a CPU without bfloat16 instructions
    assert autocast_dtype("auto", "cpu") is None
    assert autocast_dtype("fp32", "cpu") is None and autocast_dtype("fp32", CUDA) is None
    assert autocast_dtype("bf16", "cpu") == torch.bfloat16 and autocast_dtype("bf16", CUDA) == torch.bfloat16
    assert autocast_dtype("fp16", "cpu") is None  # float16 autocast needs CUDA, as the older amp switch did
    assert autocast_dtype("fp16", CUDA) == torch.float16
    if not torch.cuda.is_available():
        assert autocast_dtype("auto", CUDA) is None  # no device to ask: float32
    with pytest.raises(SettingError, match=r"precision: must be one of \['auto', 'bf16', 'fp16', 'fp32'\], got 'half'"):
        autocast_dtype("half", "cpu")


def test_monai_engines_autocast_only_on_cuda():
    assert monai_amp("auto", "cpu") == (False, {})
    assert monai_amp("bf16", "cpu") == (False, {})  # MONAI's engines autocast with device type "cuda" only
    assert monai_amp("bf16", CUDA) == (True, {"dtype": torch.bfloat16})
    assert monai_amp("fp16", CUDA) == (True, {"dtype": torch.float16})
    assert monai_amp("fp32", CUDA) == (False, {})


def test_networks_compute_in_bf16_and_hand_back_float32_then_are_restored():
    torch.manual_seed(0)
    network, x = _TwoOutputs(), torch.randn(4, 8)
    reference = network(x).image
    with autocast_networks("bf16", network, network):  # the same network twice is wrapped once
        out = network(x)
        outside = torch.ones(2, 2) @ torch.ones(2, 2)  # what the caller computes stays float32
    assert network.computed[-1] == torch.bfloat16 and outside.dtype == torch.float32
    assert out.image.dtype == torch.float32 and out.index.dtype == torch.int64 and isinstance(out, _Pair)
    torch.testing.assert_close(out.image, reference, atol=0.05, rtol=0.05)
    assert "forward" not in vars(network)
    assert torch.equal(network(x).image, reference) and network.computed[-1] == torch.float32


def test_float32_and_auto_on_a_cpu_leave_networks_alone_and_a_failure_restores_them(monkeypatch):
    monkeypatch.setattr(precision_module, "bf16_on_cpu", lambda: False)  # a CPU without bfloat16 instructions
    network = _TwoOutputs()
    for precision in ("fp32", "auto"):
        with autocast_networks(precision, network):
            assert "forward" not in vars(network)
    with pytest.raises(RuntimeError, match="stop"):
        with autocast_networks("bf16", network):
            raise RuntimeError("stop")
    assert "forward" not in vars(network)
    with pytest.raises(SettingError, match="precision: must be one of"):
        with autocast_networks("bfloat16", network):
            pass
