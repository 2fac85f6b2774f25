"""Validation previews during MC-DPM training: a few volumes sampled from the current weights, drawn as PNG."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import ignite.distributed as idist  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ignite.engine import Engine, Events  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from medgen3d.data.io import atomic_path, json_safe, load_nifti  # noqa: E402
from medgen3d.diffusion.autoregressive import generate_volumes, generation_plan  # noqa: E402
from medgen3d.diffusion.sampler import SubsequenceSampler  # noqa: E402
from medgen3d.metrics.anatomy import slice_change_rate  # noqa: E402
from medgen3d.metrics.convergence import SeedAgreement  # noqa: E402
from medgen3d.preview import label_colormap  # noqa: E402
from medgen3d.transforms.subsequence import resize_label_slices  # noqa: E402

__all__ = ["save_label_montage", "MaskSamplePreview", "ImageSequencePreview", "RefinementPreview"]

logger = logging.getLogger(__name__)


def save_label_montage(
    path: str | os.PathLike, volumes: Sequence[torch.Tensor], labels: Mapping[int, str], title: str
) -> None:
    """One row per ``(D, H, W)`` label volume: the middle axial, coronal and sagittal slices."""
    # background drawn black: unlike an overlay, nothing lies underneath
    cmap = ListedColormap([(0.0, 0.0, 0.0, 1.0), *label_colormap(len(labels)).colors[1:]])
    fig, axes = plt.subplots(len(volumes), 3, figsize=(9, 3 * len(volumes)), squeeze=False)
    for row, volume in enumerate(volumes):
        d, h, w = volume.shape
        views = (volume[d // 2].T, volume[:, :, w // 2], volume[:, h // 2, :])  # axial (H-W), coronal, sagittal
        for col, (view, name) in enumerate(zip(views, ("axial", "coronal", "sagittal"))):
            ax = axes[row, col]
            ax.imshow(
                view.cpu().numpy(), cmap=cmap, vmin=0, vmax=len(labels) - 1, origin="lower", interpolation="nearest"
            )
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=70)
    plt.close(fig)


class MaskSamplePreview:
    """Every ``interval`` iterations, sample ``num_samples`` whole volumes and write ``previews/iteration-NNNNNN.png``.

    Sampling uses its own seeded generator, so previews at different iterations differ only by the weights.

    With ``reference`` masks, each preview also measures convergence (:mod:`medgen3d.metrics.convergence`): the
    sampled volumes' slice-change rate against the reference masks', and the seed agreement gap per structure on
    windows of the reference masks. Both are logged and appended to ``previews/convergence.jsonl``, one JSON line
    per preview; a gap that stays well above 0 and a change rate well below the real one mean the model still draws
    an average continuation.

    Args:
        network: the weights to sample: the EMA copy (:class:`medgen3d.engines.ema.WeightAverage`) or the denoiser
            being trained (unwrapped from DDP).
        sampler: a fast sampler (e.g. DDIM with 10 steps).
        output_dir: the previews go to ``output_dir/previews``.
        labels: value -> name.
        depth: slices per sampled volume.
        image_size: network in-plane ``(h, w)``.
        num_condition: ``n``.
        num_samples: volumes per preview.
        interval: iterations between previews.
        reference: real label files (``(H, W, D)`` NIfTI) to measure convergence against; none: not measured.
        windows_per_volume: windows of each reference mask sampled twice for the seed agreement gap.
        new_per_window: new slices each expansion window keeps, as generation does; ``None``: all of them.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        sampler: SubsequenceSampler,
        output_dir: str | os.PathLike,
        labels: Mapping[int, str],
        depth: int,
        image_size: Sequence[int],
        num_condition: int = 2,
        num_samples: int = 2,
        interval: int = 1,
        reference: Sequence[str | os.PathLike] = (),
        windows_per_volume: int = 2,
        new_per_window: int | None = None,
    ) -> None:
        self.network, self.sampler = network, sampler
        self.out = Path(output_dir) / "previews"
        self.labels = dict((int(k), v) for k, v in labels.items())
        self.depth, self.image_size = depth, tuple(image_size)
        self.num_condition, self.num_samples, self.interval = num_condition, num_samples, interval
        self.reference, self.windows_per_volume = [Path(f) for f in reference], windows_per_volume
        self._reference_volumes: list[np.ndarray] | None = None
        self.new_per_window = new_per_window

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        m = self.network.subsequence_length
        was_training = self.network.training
        self.network.eval()
        start = (self.depth - m) // 2
        plans = [generation_plan(self.depth, start, m, self.num_condition, self.new_per_window)] * self.num_samples
        generator = torch.Generator().manual_seed(0)
        volumes = generate_volumes(
            self.network,
            self.sampler,
            plans,
            [self.depth] * self.num_samples,
            len(self.labels),
            self.image_size,
            generator=generator,
        )
        convergence = self._convergence(volumes) if self.reference else None
        self.network.train(was_training)  # the EMA copy stays in eval mode, the trained network in train mode
        path = self.out / f"iteration-{engine.state.iteration:06d}.png"
        save_label_montage(path, volumes, self.labels, f"MC-DPM samples after {engine.state.iteration} iterations")
        fractions = torch.stack([torch.bincount(v.flatten(), minlength=len(self.labels)) for v in volumes]).float()
        fractions = (fractions / fractions.sum(1, keepdim=True)).mean(0)
        logger.info(f"preview {path}: label fractions " + " ".join(f"{f:.3f}" for f in fractions.tolist()))
        if convergence is not None:
            rate, gaps = convergence["slice_change_rate"], convergence["seed_agreement_gap"]
            logger.info(
                f"preview convergence: slice-change rate {rate['synthetic']:.3f} (real {rate['real']:.3f}); "
                "seed agreement gap " + " ".join(f"{name} {v:.3f}" for name, v in gaps.items())
            )
            line = json.dumps(json_safe({"iteration": engine.state.iteration, **convergence}))
            with open(self.out / "convergence.jsonl", "a") as log:  # one line per preview: a resumed run appends
                log.write(line + "\n")

    def _convergence(self, volumes: Sequence[torch.Tensor]) -> dict[str, Any]:
        """Slice-change rates (sampled ``(D, H, W)`` volumes against the reference) and seed agreement gaps."""
        if self._reference_volumes is None:
            k = len(self.labels)
            slices = [torch.from_numpy(load_nifti(f).array.astype("int64")).permute(2, 0, 1) for f in self.reference]
            self._reference_volumes = [
                resize_label_slices(v, self.image_size, k).permute(1, 2, 0).numpy() for v in slices
            ]
        real = self._reference_volumes
        synthetic = [v.permute(1, 2, 0).cpu().numpy() for v in volumes]
        gaps = SeedAgreement(
            self.network, self.sampler, self.image_size, self.num_condition, len(self.labels), self.windows_per_volume
        )(real)
        names = [self.labels[k] for k in sorted(self.labels) if k != 0]
        return {
            "slice_change_rate": {
                "synthetic": float(np.nanmean([slice_change_rate(v) for v in synthetic])),
                "real": float(np.nanmean([slice_change_rate(v) for v in real])),
            },
            "seed_agreement_gap": {name: float(v) for name, v in zip(names, gaps)},
        }


class ImageSequencePreview:
    """Every ``interval`` iterations, generate the image of one real mask volume and write
    ``previews/iteration-NNNNNN.png``: mask | generated | real, in the axial, coronal and sagittal mid planes.

    Args:
        generator: the sequence generator being trained (unwrapped from DDP).
        case: ``{"image": path, "label": path}`` of a real case.
        output_dir: the previews go to ``output_dir/previews``.
        num_classes: ``K``.
        image_size: the generator's in-plane ``(h, w)`` (``None``: the volume's own).
        modality: ``"CT"`` or ``"MR"`` (intensity scaling of the real image).
        interval: iterations between previews.
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        case: Mapping[str, str],
        output_dir: str | os.PathLike,
        num_classes: int,
        image_size: Sequence[int] | None,
        modality: str,
        interval: int = 1,
    ) -> None:
        self.generator, self.case = generator, dict(case)
        self.out = Path(output_dir) / "previews"
        self.num_classes, self.image_size, self.modality, self.interval = (
            num_classes,
            tuple(image_size),
            modality,
            interval,
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        from medgen3d.data.intensity import volume_scale
        from medgen3d.data.io import load_nifti
        from medgen3d.synthesis.images import generate_image_volumes
        from medgen3d.transforms.subsequence import resize_label_slices

        if idist.get_rank() != 0:
            return
        label = torch.from_numpy(load_nifti(self.case["label"]).array.astype("int64")).permute(2, 0, 1)
        real = torch.from_numpy(load_nifti(self.case["image"]).array).float().permute(2, 0, 1)
        real = volume_scale(real, self.modality).to_network(real)
        size = self.image_size or tuple(label.shape[1:])
        label = resize_label_slices(label, size, self.num_classes)
        real = torch.nn.functional.interpolate(real[:, None], size=size, mode="bilinear")[:, 0]
        self.generator.eval()
        [fake] = generate_image_volumes(self.generator, [label], self.num_classes)
        self.generator.train()
        d, h, w = label.shape
        fig, axes = plt.subplots(3, 3, figsize=(9, 9))
        for row, volume in enumerate((label.float(), fake.cpu(), real)):
            views = (volume[d // 2].T, volume[:, :, w // 2], volume[:, h // 2, :])
            for col, view in enumerate(views):
                kwargs = (
                    {"vmin": 0, "vmax": self.num_classes - 1, "cmap": "tab10"}
                    if row == 0
                    else {"vmin": -1, "vmax": 1, "cmap": "gray"}
                )
                axes[row, col].imshow(view.numpy(), origin="lower", interpolation="nearest", **kwargs)
                axes[row, col].set_axis_off()
            axes[row, 0].set_title(("mask", "generated", "real")[row], loc="left")
        fig.suptitle(f"image sequence generator after {engine.state.iteration} iterations")
        fig.tight_layout()
        path = self.out / f"iteration-{engine.state.iteration:06d}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=70)
        plt.close(fig)
        logger.info(f"preview {path}: mean |generated - real| = {torch.mean(torch.abs(fake.cpu() - real)):.3f}")


class RefinementPreview:
    """Every ``interval`` iterations, noise the middle slice of a real case to step ``noise_steps``, denoise it with the
    model being trained, and write ``previews/iteration-NNNNNN.png``: mask | real | noised | denoised.

    Args:
        network: the SPADE diffusion UNet being trained.
        scheduler: its DDPM schedule.
        case: ``{"image": path, "label": path}`` of a real case.
        view: the view the model is trained on.
        output_dir: the previews go to ``output_dir/previews``.
        num_classes: ``K``.
        modality: ``"CT"`` or ``"MR"``.
        noise_steps: how far to noise (further than the refiner's default, so the model's work shows).
        interval: iterations between previews.
    """

    def __init__(self, network, scheduler, case, view, output_dir, num_classes, modality, noise_steps=200, interval=1):
        self.network, self.scheduler, self.case, self.view = network, scheduler, dict(case), view
        self.out = Path(output_dir) / "previews"
        self.num_classes, self.modality, self.noise_steps, self.interval = num_classes, modality, noise_steps, interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        from medgen3d.data.intensity import volume_scale
        from medgen3d.data.io import load_nifti
        from medgen3d.diffusion.refiner import SemanticRefiner
        from medgen3d.views import to_view

        if idist.get_rank() != 0:
            return
        image = torch.from_numpy(load_nifti(self.case["image"]).array).float()
        label = torch.from_numpy(load_nifti(self.case["label"]).array.astype("int64"))
        image = volume_scale(image, self.modality).to_network(image)
        x, mask = to_view(image[None], self.view), to_view(label[None], self.view)
        middle = x.shape[0] // 2
        x, mask = x[middle : middle + 1], mask[middle : middle + 1]
        seg = torch.nn.functional.one_hot(mask[:, 0], self.num_classes).permute(0, 3, 1, 2).float()
        device = next(self.network.parameters()).device
        generator = torch.Generator().manual_seed(0)
        noised = self.scheduler.add_noise(
            x, torch.randn(x.shape, generator=generator), torch.tensor([self.noise_steps - 1])
        )
        self.network.eval()
        refiner = SemanticRefiner(self.scheduler, self.noise_steps)
        refined = refiner.refine_slices(
            self.network, x.to(device), seg.to(device), torch.Generator().manual_seed(0)
        ).cpu()
        self.network.train()
        fig, axes = plt.subplots(1, 4, figsize=(12, 3.5))
        panels = [
            (mask[0, 0].float(), "mask"),
            (x[0, 0], "real"),
            (noised[0, 0], f"noised to t={self.noise_steps}"),
            (refined[0, 0], "denoised"),
        ]
        for ax, (panel, title) in zip(axes, panels):
            kwargs = (
                {"cmap": "tab10", "vmin": 0, "vmax": 9} if title == "mask" else {"cmap": "gray", "vmin": -1, "vmax": 1}
            )
            ax.imshow(panel.T.numpy(), origin="lower", interpolation="nearest", **kwargs)
            ax.set_title(title)
            ax.set_axis_off()
        fig.suptitle(f"{self.view} semantic diffusion model after {engine.state.iteration} iterations")
        fig.tight_layout()
        path = self.out / f"iteration-{engine.state.iteration:06d}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=70)
        plt.close(fig)
        error = torch.mean((refined - x) ** 2).item()
        logger.info(f"preview {path}: MSE to the real slice {error:.4f} (noised {torch.mean((noised - x) ** 2):.4f})")
