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

__all__ = ["Segmenter", "alignment_dice", "real_looking_alignment"]


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


def real_looking_alignment(
    reference: dict[str, float | None], lookup: dict[str, float | None], lookup_synthetic: dict[str, float | None]
) -> dict[str, float | None]:
    """What images as segmentable as the real ones would score on the synthetic masks: an estimate per structure.

    A per-label lookup renders each structure at its mean intensity, so its alignment Dice is what a mask allows;
    real images lose part of it (noise, partial volume, texture). Each structure's Dice on the lookup of the
    synthetic masks, times the real images' Dice over the lookup's on the real masks, carries that loss over to
    the synthetic masks: an image stage rendering as real images do lands near it, one rendering as cleanly as the
    lookup above it. It says whether an alignment target is the image stage's to reach or the masks'.

    Args:
        reference: per structure, the real held-out images' alignment Dice on their own masks.
        lookup: per structure, the lookup of the real held-out masks'.
        lookup_synthetic: per structure, the lookup of the synthetic masks'.

    Returns:
        Per structure of ``lookup_synthetic``, the estimate; None where a value is missing or NaN. Where the lookup
        scores 0 on the real masks there is no loss to carry over (ratio 1). ``"mean"``: over the structures with
        an estimate, as the report's means are over the structures present (None if there are none).
    """
    out: dict[str, float | None] = {}
    for name, synthetic in lookup_synthetic.items():
        if name == "mean":
            continue
        real, table = reference.get(name), lookup.get(name)
        if not all(v is not None and np.isfinite(v) for v in (synthetic, real, table)):
            out[name] = None
            continue
        out[name] = float(synthetic * real / table) if table > 0 else float(synthetic)
    kept = [v for v in out.values() if v is not None]
    out["mean"] = float(np.mean(kept)) if kept else None
    return out
