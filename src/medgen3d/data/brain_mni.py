"""The embedded real-anatomy dataset ``brain-mni``: T1 MR subjects made from the MNI ICBM152 2009a template.

The template (skull-stripped T1, grey- and white-matter probability maps, 1 mm) ships inside the ``nilearn``
package, so the dataset is built offline. Labels follow the MedGen3D paper's brain experiment (FreeSurfer-style
four regions):

    0 background, 1 cortex, 2 subcortical grey matter, 3 white matter, 4 CSF

Tissue probabilities come from the template's maps (CSF is what the brain mask holds beyond grey and white
matter: ventricles and sulci); grey matter inside a central ellipsoid around the basal ganglia and thalami, away
from the brain surface, is subcortical, the rest cortex. Each subject is the template seen through its own
random smooth non-linear and affine deformation, with its own intensity changes (gamma contrast, smooth bias
field, Rician noise, gain), all drawn from the subject's seed. Labels are the arg-max of the deformed tissue
probabilities, so they stay aligned with the deformed image. The subjects are deformations of one template, not
separate people: they share its anatomy and differ in shape, size, pose and contrast.

The intensity changes are drawn from a *scanner profile* (:data:`SCANNERS`). Scanner ``"a"`` is the one
``brain-mni`` has always used; scanner ``"b"`` sees the same subjects as another scanner would: a harder gamma
contrast, a stronger and coarser bias field, a lower gain and two to three times the noise. A subject's anatomy (its
deformation, hence its label map) is drawn before its intensities, so the same seed gives the same label map on
either scanner: ``brain-mni-scanner-b`` is a target domain for transfer experiments, with the labels of
``brain-mni``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage

from medgen3d.data.builder import GeneratedCase, SplitSizes, build_dataset
from medgen3d.data.dataset import DatasetSpec
from medgen3d.data.io import load_nifti
from medgen3d.data.spatial import Grid, random_affine, sample_at, smooth_random_field, world_points

__all__ = [
    "BRAIN_LABELS",
    "BRAIN_PRESETS",
    "SCANNERS",
    "ScannerProfile",
    "brain_mni_name",
    "make_brain_case",
    "build_brain_mni",
]

BRAIN_LABELS = {0: "background", 1: "cortex", 2: "subcortical_gm", 3: "white_matter", 4: "csf"}
# (H, W, D) and spacing in mm, RAS, slices along the last (inferior -> superior) axis. Every preset covers the
# same 160 x 192 x 160 mm field of view: the paper's 192 x 160 x 160 crop, with our axes ordered x, y, z.
BRAIN_PRESETS: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "paper": ((160, 192, 160), (1.0, 1.0, 1.0)),
    "small": ((80, 96, 80), (2.0, 2.0, 2.0)),
    "tiny": ((32, 32, 32), (5.0, 6.0, 5.0)),
}
# Centre of the field of view in MNI space (mm): the centre of the template's brain bounding box.
_FOV_CENTER = np.array([0.0, -17.0, 5.0])
# Subcortical grey matter: caudate, putamen, pallidum and thalamus sit inside this ellipsoid (MNI mm) ...
_SUBCORTICAL_CENTER = np.array([0.0, -6.0, 4.0])
_SUBCORTICAL_RADII = np.array([33.0, 34.0, 24.0])
# ... and at least this far (mm) from the brain's outer surface, which keeps the insular cortex out.
_SUBCORTICAL_DEPTH_MM = 12.0


class ScannerProfile(NamedTuple):
    """The ranges a scanner's per-subject MR intensity changes are drawn from (see :func:`_brain_image`).

    Attributes:
        gamma: ``(low, high)`` of the gamma contrast applied to the [0, 1] template T1; above 1 darkens grey matter
            and CSF more than white matter.
        bias_amplitude: standard deviation of the log bias field's coarse values.
        bias_control_points: coarse grid points per axis of the bias field; fewer is coarser.
        gain: ``(low, high)`` of the signal scale, in arbitrary MR units.
        noise: ``(low, high)`` of the Rician noise sigma as a fraction of the gain.
    """

    gamma: tuple[float, float]
    bias_amplitude: float
    bias_control_points: int
    gain: tuple[float, float]
    noise: tuple[float, float]


SCANNERS: dict[str, ScannerProfile] = {
    # the original brain-mni intensities: changing any value here changes every existing dataset
    "a": ScannerProfile(
        gamma=(0.7, 1.4), bias_amplitude=0.12, bias_control_points=4, gain=(600.0, 1000.0), noise=(0.01, 0.03)
    ),
    # another scanner: harder contrast, a stronger and coarser bias field, lower gain and more noise
    "b": ScannerProfile(
        gamma=(1.8, 2.6), bias_amplitude=0.3, bias_control_points=3, gain=(200.0, 400.0), noise=(0.04, 0.07)
    ),
}


def _check_scanner(scanner: str) -> ScannerProfile:
    if scanner not in SCANNERS:
        raise ValueError(f"scanner must be one of {sorted(SCANNERS)}, got {scanner!r}")
    return SCANNERS[scanner]


def brain_mni_name(scanner: str = "a") -> str:
    """The dataset name for ``scanner``: ``brain-mni`` for scanner ``"a"``, ``brain-mni-scanner-<name>`` else."""
    _check_scanner(scanner)
    return "brain-mni" if scanner == "a" else f"brain-mni-scanner-{scanner}"


class _Template(NamedTuple):
    """The template on its 1 mm grid: tissue probabilities ``(4, h, w, d)`` (cortex, subcortical GM, WM, CSF)
    and the T1 image ``(1, h, w, d)`` scaled to [0, 1]."""

    tissues: torch.Tensor
    t1: torch.Tensor
    affine: np.ndarray


def _template_paths() -> tuple[str, str, str]:
    try:
        from nilearn import datasets
    except ImportError as err:  # nilearn is an extra: say which one
        raise ImportError(
            "the brain-mni dataset is built from the MNI152 template shipped with nilearn; "
            "install it with `pip install 'medgen3d[data]'`"
        ) from err
    return datasets.MNI152_FILE_PATH, datasets.GM_MNI152_FILE_PATH, datasets.WM_MNI152_FILE_PATH


@functools.lru_cache(maxsize=1)
def _load_template() -> _Template:
    t1_path, gm_path, wm_path = _template_paths()
    t1, affine = load_nifti(t1_path, dtype=np.float32)
    # the probability maps are stored as 0..255
    gm = np.clip(load_nifti(gm_path, dtype=np.float32).array / 255.0, 0.0, 1.0)
    wm = np.clip(load_nifti(wm_path, dtype=np.float32).array / 255.0, 0.0, 1.0)
    brain = ndimage.binary_fill_holes(t1 > 0)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in t1.shape], indexing="ij"), axis=-1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside_ellipsoid = (((xyz - _SUBCORTICAL_CENTER) / _SUBCORTICAL_RADII) ** 2).sum(-1) <= 1.0
    depth_mm = ndimage.distance_transform_edt(brain, sampling=np.sqrt((affine[:3, :3] ** 2).sum(0)))
    subcortical = inside_ellipsoid & (depth_mm >= _SUBCORTICAL_DEPTH_MM)
    tissues = np.stack([gm * ~subcortical, gm * subcortical, wm, csf]) * brain
    return _Template(torch.from_numpy(tissues.astype(np.float32)), torch.from_numpy(t1 / t1.max())[None], affine)


def _brain_image(rng: np.random.Generator, t1: torch.Tensor, profile: ScannerProfile) -> np.ndarray:
    """Per-subject MR intensities from the deformed template T1 ``(1, H, W, D)`` in [0, 1]: gamma contrast, smooth
    multiplicative bias field, gain, and Rician noise (the magnitude of complex Gaussian noise, as in MR), each
    drawn from the ranges of the scanner ``profile``. Returns float32 ``(H, W, D)``."""
    # the draw order is part of the datasets' definition: reordering it changes every existing subject
    gamma = rng.uniform(*profile.gamma)
    bias_field = smooth_random_field(
        rng, tuple(t1.shape[1:]), control_points=profile.bias_control_points, amplitude=profile.bias_amplitude
    )
    bias = torch.exp(bias_field)
    gain = rng.uniform(*profile.gain)
    signal = gain * t1.clamp(0, 1) ** gamma * bias
    sigma = gain * rng.uniform(*profile.noise)
    real = signal + torch.from_numpy(rng.normal(0.0, sigma, size=signal.shape)).float()
    imag = torch.from_numpy(rng.normal(0.0, sigma, size=signal.shape)).float()
    return torch.sqrt(real**2 + imag**2)[0].numpy().astype(np.float32)


def make_brain_case(seed: int, preset: str = "small", scanner: str = "a") -> GeneratedCase:
    """One ``brain-mni`` subject from its seed.

    Args:
        seed: the subject's seed; the same seed gives the same subject.
        preset: ``"paper"`` (1 mm, 160x192x160), ``"small"`` (2 mm, 80x96x80) or ``"tiny"`` (32^3, tests).
        scanner: the scanner profile in :data:`SCANNERS`; it changes the image only, never the label.

    Returns:
        ``image`` float32 ``(H, W, D)`` (arbitrary MR units), ``label`` uint8 ``(H, W, D)`` with values
        :data:`BRAIN_LABELS`, and the RAS ``affine`` in MNI millimetres.
    """
    if preset not in BRAIN_PRESETS:
        raise ValueError(f"preset must be one of {sorted(BRAIN_PRESETS)}, got {preset!r}")
    profile = _check_scanner(scanner)
    shape, spacing = BRAIN_PRESETS[preset]
    template = _load_template()
    rng = np.random.default_rng(seed)
    grid = Grid.ras(shape, spacing, _FOV_CENTER)
    # 1. where each output voxel looks in the template: a random affine plus a smooth non-linear displacement (mm)
    pose = torch.as_tensor(random_affine(rng, _FOV_CENTER, 6.0, (0.9, 1.1), 4.0))
    displacement = smooth_random_field(rng, shape, control_points=5, amplitude=3.0, channels=3)
    points = world_points(grid) @ pose[:3, :3].T + pose[:3, 3] + displacement.permute(1, 2, 3, 0).double()
    # 2. labels: arg-max of the deformed tissue probabilities, background where no tissue outweighs it
    tissues = sample_at(template.tissues, template.affine, points)
    background = (1.0 - tissues.sum(0, keepdim=True)).clamp(min=0.0)
    label = torch.cat([background, tissues]).argmax(0).numpy().astype(np.uint8)
    # 3. the image: the same deformation of the template T1, then per-subject intensity changes. These draws come
    # after the anatomy's, so the scanner profile cannot change the label map of a seed.
    image = _brain_image(rng, sample_at(template.t1, template.affine, points), profile)
    return GeneratedCase(image=image, label=label, affine=grid.affine)


def build_brain_mni(
    out_dir: str | os.PathLike,
    preset: str = "small",
    sizes: SplitSizes = SplitSizes(40, 10, 10),
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    overwrite: bool = False,
    scanner: str = "a",
) -> DatasetSpec:
    """Build the ``brain-mni`` dataset (default split 40/10/10, as the paper's OASIS experiment) in ``out_dir``.

    With ``scanner="b"`` the dataset is ``brain-mni-scanner-b``: the same subjects for the same ``seed`` (same
    label maps), seen through scanner ``"b"`` of :data:`SCANNERS`. Resumable: finished subjects are kept. See
    :func:`medgen3d.data.builder.build_dataset`.
    """
    if preset not in BRAIN_PRESETS:
        raise ValueError(f"preset must be one of {sorted(BRAIN_PRESETS)}, got {preset!r}")
    name = brain_mni_name(scanner)
    shape, spacing = BRAIN_PRESETS[preset]
    params = {"preset": preset, "shape": list(shape), "spacing": list(spacing)}
    if scanner != "a":
        # scanner "a" is left out of the record so that folders built before scanners existed stay resumable
        # (the builder refuses a folder whose recorded params differ)
        params["scanner"] = scanner
    return build_dataset(
        out_dir,
        name=name,
        modality="MR",
        labels=BRAIN_LABELS,
        make_case=functools.partial(make_brain_case, preset=preset, scanner=scanner),
        sizes=SplitSizes(*sizes),
        seed=seed,
        params=params,
        progress=progress,
        overwrite=overwrite,
    )
