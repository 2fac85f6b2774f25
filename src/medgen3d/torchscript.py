"""Local TorchScript networks: the one way the project loads user-supplied weights it cannot download.

Feature networks for FID (Inception), LPIPS networks and perceptual-loss networks reach the project only as
TorchScript files the user already has (``torch.jit.save``); metrics and losses both load them here, so a missing
or foreign file is reported the same way wherever it is configured.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medgen3d.data.io import DataError

__all__ = ["TorchScriptNotFoundError", "load_torchscript"]


class TorchScriptNotFoundError(DataError, FileNotFoundError):
    """The TorchScript file is not there: a :class:`DataError` (one line naming the file, as every dataset file
    problem), and a :class:`FileNotFoundError` for callers that check for the file's absence."""


def load_torchscript(path: str | os.PathLike, what: str) -> torch.jit.ScriptModule:
    """A local TorchScript network on the CPU, in eval mode.

    Args:
        path: the file written by ``torch.jit.save``.
        what: what the file was meant to be, for the error message (``"LPIPS network file"``).

    Returns:
        The loaded module; its parameters keep the ``requires_grad`` they were saved with.

    Raises:
        TorchScriptNotFoundError: ``path`` is not a file (``"{path}: {what} not found"``).
        DataError: ``path`` is not a TorchScript file (a checkpoint, a truncated file).
    """
    if not Path(path).is_file():
        raise TorchScriptNotFoundError(f"{path}: {what} not found")
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as err:
        # torch's message runs over many lines (a C++ stack); its first names the problem
        raise DataError(f"{path}: not a TorchScript file ({str(err).splitlines()[0]})") from err
