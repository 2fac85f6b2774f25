"""The three slice views of a volume (axial, coronal, sagittal): their names, their axes, one check of view names,
and the moves between a volume and the stack of one view's slices.

Volumes are ``(H, W, D)`` RAS, channel-first ``(C, H, W, D)`` where a channel is present: axial slices run along
``D``, coronal along ``W`` (anterior-posterior), sagittal along ``H`` (left-right). The refiner, the transforms,
the metrics and the previews all slice the same way, so every view name in the package is checked here, and an
unknown one is refused with the same message wherever it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the hints only: the names and the check serve torch-free code too (the PNG previews)
    import torch

__all__ = ["VIEWS", "check_view", "check_views", "to_view", "from_view"]

# view -> the axis of an (H, W, D) volume its slices run along; the key order is the order "all views" means
VIEWS = {"axial": 2, "coronal": 1, "sagittal": 0}


def check_view(view: str) -> int:
    """The axis of an ``(H, W, D)`` volume that ``view``'s slices run along.

    Args:
        view: one of :data:`VIEWS`.

    Returns:
        ``2`` (axial), ``1`` (coronal) or ``0`` (sagittal); add 1 for a channel-first ``(C, H, W, D)`` volume.

    Raises:
        ValueError: naming ``view`` when it is not one of :data:`VIEWS`.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {list(VIEWS)}, got {view!r}")
    return VIEWS[view]


def check_views(views: Sequence[str] | None) -> tuple[str, ...]:
    """``views`` as a tuple, checked: non-empty, no repeats, each one of :data:`VIEWS`; ``None`` stands for all
    of them, in :data:`VIEWS` order.

    Raises:
        ValueError: naming ``views`` and what is wrong with it.
    """
    if views is None:
        return tuple(VIEWS)
    if isinstance(views, str):  # a single name would otherwise be read as its letters
        raise ValueError(f"views must be a sequence of view names, got the string {views!r}")
    views = tuple(views)
    if not views:
        raise ValueError(f"views must name at least one of {list(VIEWS)}")
    unknown = [view for view in views if view not in VIEWS]
    if unknown:
        raise ValueError(f"views must be among {list(VIEWS)}, got {unknown}")
    if len(set(views)) != len(views):
        raise ValueError(f"views must not repeat, got {list(views)}")
    return views


def to_view(volume: torch.Tensor, view: str) -> torch.Tensor:
    """The slices of one view, stacked first.

    Args:
        volume: ``(C, H, W, D)``.
        view: one of :data:`VIEWS`.

    Returns:
        ``(N, C, a, b)``: ``N`` slices along the view's axis, a view of ``volume``'s memory (no copy).
    """
    return volume.movedim(1 + check_view(view), 0)


def from_view(slices: torch.Tensor, view: str) -> torch.Tensor:
    """Inverse of :func:`to_view`.

    Args:
        slices: ``(N, C, a, b)``, slices of ``view``.
        view: one of :data:`VIEWS`.

    Returns:
        ``(C, H, W, D)``.
    """
    return slices.movedim(0, 1 + check_view(view))
