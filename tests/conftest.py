"""Shared fixtures: tiny NIfTI datasets with known content, written through the package's own writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medgen3d.data.dataset import Case, DatasetSpec, write_dataset
from medgen3d.data.io import save_nifti

# Tiny-dataset geometry: 16 x 16 slices, 12 of them, 1 x 1 x 2 mm, origin away from zero so that a lost affine shows.
TINY_SHAPE = (16, 16, 12)
TINY_AFFINE = np.array([[1.0, 0, 0, -8.0], [0, 1.0, 0, -20.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])
TINY_LABELS = {0: "background", 1: "slab_1", 2: "slab_2", 3: "slab_3"}


def slab_label(shape: tuple[int, int, int] = TINY_SHAPE, shift: int = 0) -> np.ndarray:
    """Label ``k`` fills the ``k``-th third of the slices (shifted by ``shift``), inside a centred square."""
    h, w, d = shape
    label = np.zeros(shape, dtype=np.uint8)
    for k in range(d):
        label[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4, k] = min(3, 1 + (k + shift) * 3 // d)
    return label


def slab_image(label: np.ndarray) -> np.ndarray:
    """Intensity is a function of the label: 100 per label value."""
    return (100.0 * label).astype(np.float32)


def write_tiny_dataset(
    root: Path, splits: tuple[int, int, int] = (3, 1, 1), modality: str = "MR", affine: np.ndarray = TINY_AFFINE
) -> DatasetSpec:
    """Write a dataset whose case ``i`` is :func:`slab_label` shifted by ``i`` slices, image from the label."""
    cases = []
    for i in range(sum(splits)):
        case = Case(image=f"images/case-{i}.nii.gz", label=f"labels/case-{i}.nii.gz")
        label = slab_label(shift=i)
        save_nifti(root / case.label, label, affine)
        save_nifti(root / case.image, slab_image(label), affine)
        cases.append(case)
    n_train, n_val, _ = splits
    spec = DatasetSpec(
        name="tiny",
        modality=modality,
        labels=dict(TINY_LABELS),
        training=cases[:n_train],
        validation=cases[n_train : n_train + n_val],
        test=cases[n_train + n_val :],
    )
    return write_dataset(root, spec)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> DatasetSpec:
    """A valid 5-case dataset (3 training, 1 validation, 1 test) in a fresh folder."""
    return write_tiny_dataset(tmp_path / "tiny")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Tests start from the same global random state."""
    np.random.seed(0)
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests where no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def tiny_spade(label_nc: int, channels: tuple[int, int] = (8, 8), spade_channels: int = 8):
    """A tiny 2D SPADE diffusion UNet (one refiner view): ``(x (B, 1, H, W), t, seg (B, label_nc, H, W))``."""
    from monai.networks.nets import SPADEDiffusionModelUNet

    return SPADEDiffusionModelUNet(
        2,
        1,
        1,
        label_nc=label_nc,
        channels=channels,
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
        spade_intermediate_channels=spade_channels,
    )


def random_mcdpm(num_classes: int = 3, length: int = 4):
    """A tiny MC-DPM with random weights (MONAI zero-initialises the output layer, which would hide bugs)."""
    from medgen3d.networks import MultiConditionDiffusionUNet

    torch.manual_seed(0)
    network = MultiConditionDiffusionUNet(
        num_classes, length, channels=(8, 16), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8
    )
    for parameter in network.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    return network.eval()
