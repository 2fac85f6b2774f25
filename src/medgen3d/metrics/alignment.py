"""Image-mask alignment: does a segmenter trained on real data find the generated mask in the generated image?

A generated pair is aligned when a real-trained segmenter, run on the image, predicts the mask it was generated
from. The same measure on real held-out pairs (prediction against ground truth) is the reference: synthetic pairs
cannot be expected to score above what the segmenter achieves on real data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from medgen3d.metrics.segmentation import dice_per_structure

__all__ = ["Segmenter", "alignment_dice"]


class Segmenter:
    """A trained network and its inferer as one ``(H, W, D)`` image -> ``(H, W, D)`` label map function.

    Args:
        network: the segmentation network (put in eval mode).
        inferer: ``inferer(image (1, 1, H, W, D), network) -> logits (1, K, H, W, D)``, e.g. a sliding window or
            ``SliceInferer`` for a 2D network.
    """

    def __init__(self, network: torch.nn.Module, inferer: Callable[[torch.Tensor, torch.nn.Module], torch.Tensor]):
        self.network = network.eval()
        self.inferer = inferer
        self.device = next(network.parameters()).device

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> np.ndarray:
        """``image`` ``(H, W, D)`` in the network's intensity range -> int64 labels ``(H, W, D)``."""
        logits = self.inferer(torch.as_tensor(image).float()[None, None].to(self.device), self.network)
        return logits.argmax(1)[0].cpu().numpy().astype(np.int64)


def alignment_dice(
    segment: Callable[[torch.Tensor], np.ndarray],
    images: Sequence[torch.Tensor],
    labels: Sequence[np.ndarray],
    num_classes: int,
) -> np.ndarray:
    """Dice per foreground structure between each mask and the segmentation of its image.

    Returns:
        ``(N, K - 1)``: one row per pair; NaN where a structure is absent from both the mask and the segmentation
        (see :func:`~medgen3d.metrics.segmentation.dice_per_structure`), so average with ``mean_present``.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} masks")
    return np.stack([dice_per_structure(segment(i), np.asarray(m), num_classes) for i, m in zip(images, labels)])
