"""Scoring a trained segmentation network on held-out real datasets (the downstream experiment's test step)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from medgen3d.data.datalists import label_datalist
from medgen3d.data.dataset import read_dataset
from medgen3d.metrics.segmentation import SegmentationResult, dice_per_structure, mean_present

__all__ = ["evaluate_datasets"]


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
        preprocessing: the deterministic transforms applied to ``{"image": path, "label": path}``.
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
        results.append(SegmentationResult(strategy, network_name, seed, test_name, dice))
    return results
