from __future__ import annotations

import pytest
import torch
from torch import nn

from medgen3d.data.io import DataError
from medgen3d.torchscript import TorchScriptNotFoundError, load_torchscript


class _Scale(nn.Module):
    """A scripted module with a weight and a train/eval difference, to see both survive the round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([2.0, -3.0]))
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x * self.weight)


def test_a_missing_file_is_both_a_data_error_and_a_file_not_found_error(tmp_path):
    with pytest.raises(TorchScriptNotFoundError, match=r"absent\.pt: LPIPS network file not found") as caught:
        load_torchscript(tmp_path / "absent.pt", "LPIPS network file")
    assert isinstance(caught.value, DataError) and isinstance(caught.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        load_torchscript(tmp_path, "feature network file")  # a folder is not a file either


def test_a_file_that_is_not_torchscript_is_a_data_error_naming_it(tmp_path):
    checkpoint = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, checkpoint)  # a state dict, not a scripted module
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip archive")
    for path in (checkpoint, junk):
        with pytest.raises(DataError, match=rf"{path.name}: not a TorchScript file \(") as caught:
            load_torchscript(path, "feature network file")
        assert not isinstance(caught.value, FileNotFoundError)
        assert "\n" not in str(caught.value)  # one line, whatever torch's message was


def test_a_scripted_module_round_trips_on_the_cpu_in_eval_mode(tmp_path):
    module = _Scale()
    path = tmp_path / "scale.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    loaded = load_torchscript(path, "feature network file")
    assert not loaded.training  # dropout off: the output is deterministic
    x = torch.tensor([[1.0, 1.0], [0.5, 2.0]])
    assert torch.equal(loaded(x), x * module.weight.detach())
    assert torch.equal(loaded(x), loaded(x))
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert torch.equal(loaded.weight, module.weight.detach())
