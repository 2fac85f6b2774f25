"""Scoring a trained segmentation network on held-out real datasets (the downstream experiment's test step)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from medgen3d.data.datalists import label_datalist
from medgen3d.data.dataset import read_dataset
from medgen3d.metrics.segmentation import SegmentationResult, dice_per_structure, mean_present

__all__ = ["SegmentationEvaluation", "evaluate_datasets"]


@torch.no_grad()
def evaluate_datasets(
    network: torch.nn.Module,
    inferer: Callable[[torch.Tensor, torch.nn.Module], torch.Tensor],
    preprocessing: Callable[[dict], dict],
    test_sets: Mapping[str, str],
    labels: Mapping,
    strategy: str,
    network_name: str,
    seed: int,
    split: str = "test",
    device: torch.device | str = "cpu",
) -> list[SegmentationResult]:
    """Mean Dice per structure of ``network`` on the ``split`` cases of each test set.

    Args:
        network: the trained segmentation network.
        inferer: ``inferer(image (1, 1, H, W, D), network) -> logits (1, K, H, W, D)``, e.g. a sliding window.
        preprocessing: the deterministic transforms applied to ``{"image": path, "label": path}``, without
            padding: the inferer pads a volume smaller than its window and crops its output back, so only the
            case's own voxels are scored (a padded label would count replicated or filler voxels).
        test_sets: name -> dataset folder; each must declare exactly ``labels`` (else ``DataError`` naming it).
        labels: the model's label set (value -> name).
        strategy, network_name, seed: recorded in each result.
        split: which split of each test set to score.
        device: where to run the network.
    """
    network.eval()
    names = {int(k): v for k, v in labels.items() if int(k) != 0}
    results = []
    for test_name, folder in test_sets.items():
        spec = read_dataset(folder)
        scores = []
        for item in label_datalist(spec, labels, 1, (split,), with_images=True):
            data = preprocessing(dict(item))
            logits = inferer(torch.as_tensor(data["image"])[None].to(device), network)
            prediction = logits.argmax(1)[0].cpu().numpy()
            scores.append(dice_per_structure(prediction, np.asarray(data["label"])[0], len(labels)))
        mean = mean_present(scores, axis=0)  # a structure absent from both maps of a case is NaN there
        dice = {names[k]: float(mean[k - 1]) for k in sorted(names)}
        results.append(SegmentationResult(strategy, network_name, seed, test_name, dice, cases=len(scores)))
    return results


@dataclass(kw_only=True)
class SegmentationEvaluation:
    """The arguments of :func:`evaluate_datasets`, by name, so a bundle config can build the evaluation as a
    component and each argument can be overridden on its own (``--evaluation#test_split validation``).

    Args:
        network: the trained segmentation network.
        inferer: ``inferer(image (1, 1, H, W, D), network) -> logits (1, K, H, W, D)``.
        preprocessing: the deterministic transforms applied to ``{"image": path, "label": path}``.
        test_sets: name -> dataset folder; each must declare exactly ``labels``.
        labels: the model's label set (value -> name).
        strategy: the training strategy, recorded in each result (e.g. ``"E2-1"``).
        network_name: the network, recorded in each result (e.g. ``"swin_unetr"``).
        seed: the training seed, recorded in each result.
        test_split: which split of each test set to score.
        device: where to run the network.
    """

    network: torch.nn.Module = field(repr=False)
    inferer: Callable[[torch.Tensor, torch.nn.Module], torch.Tensor] = field(repr=False)
    preprocessing: Callable[[dict], dict] = field(repr=False)
    test_sets: Mapping[str, str]
    labels: Mapping
    strategy: str
    network_name: str
    seed: int
    test_split: str = "test"
    device: torch.device | str = "cpu"

    def run(self) -> list[SegmentationResult]:
        """One result per test set: the mean Dice per structure over its ``test_split`` cases."""
        return evaluate_datasets(
            self.network,
            self.inferer,
            self.preprocessing,
            self.test_sets,
            self.labels,
            self.strategy,
            self.network_name,
            self.seed,
            split=self.test_split,
            device=self.device,
        )
