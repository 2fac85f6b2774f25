"""``thorax-phantom``: procedural thoracic CT volumes with the MedGen3D paper's seven-organ label set.

The volumes are *procedural*, not real anatomy: every organ is an analytic shape (superellipse body, domed pleural
cavities, a rotated ellipsoid heart, elliptic tubes and capsules for the airways, oesophagus, vessels and spine)
whose sizes, positions and z-extents are drawn per case from the case seed and vary smoothly along z, then warped
by one smooth random in-plane displacement. They stand in for SegTHOR-like data where no real scans can be
downloaded; the layout is plausible (lungs either side of the mediastinum, heart anterior-left, trachea anterior to
the spine in the upper volume, oesophagus between them, cord inside a bony vertebra) and intensities are in HU.

Labels: 0 background, 1 body, 2 left lung, 3 right lung, 4 heart, 5 trachea (with the main bronchi), 6 oesophagus,
7 spinal cord. Bone, vessels and fat appear in the image only (their label is ``body``).

Geometry: ``(H, W, D)`` arrays in RAS+ (axis 0 to the patient's Left, axis 1 Anterior, axis 2 Superior), centred on
the world origin, with the same ~384 x 384 x 288 mm field of view in every preset. All anatomy is drawn before the
image noise and from fixed-size random draws, so one seed gives the same anatomy at every preset (up to voxel size:
thin tubes are never thinner than about one in-plane voxel, so that every organ is present even in ``tiny``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from scipy.ndimage import gaussian_filter

from medgen3d.data.builder import GeneratedCase, SplitSizes, build_dataset
from medgen3d.data.dataset import DatasetSpec
from medgen3d.data.spatial import Grid, smooth_random_field

__all__ = ["THORAX_LABELS", "THORAX_PRESETS", "make_thorax_case", "build_thorax_phantom"]

THORAX_LABELS: dict[int, str] = {
    0: "background",
    1: "body",
    2: "left_lung",
    3: "right_lung",
    4: "heart",
    5: "trachea",
    6: "esophagus",
    7: "spinal_cord",
}
# preset -> ((H, W, D), spacing in mm); the field of view is 384 x 384 x 288 mm in all three.
THORAX_PRESETS: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "paper": ((320, 320, 96), (1.2, 1.2, 3.0)),
    "small": ((128, 128, 48), (3.0, 3.0, 6.0)),
    "tiny": ((32, 32, 16), (12.0, 12.0, 18.0)),
}
_GENERATOR_VERSION = 1  # bump when the drawn anatomy changes, so an old folder is not silently extended
_HALF_Z = 144.0  # half the field of view along z (mm): the range smooth z-curves are defined over


def _check_preset(preset: str) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    if preset not in THORAX_PRESETS:
        raise ValueError(f"preset must be one of {sorted(THORAX_PRESETS)}, got {preset!r}")
    return THORAX_PRESETS[preset]


def _z_curve(rng: np.random.Generator, z: np.ndarray, amplitude: float) -> np.ndarray:
    """A smooth random function of ``z`` (mm): three low cosine harmonics over the field of view."""
    weights = rng.normal(0.0, amplitude, size=3) / np.arange(1, 4)
    phases = rng.uniform(0.0, 2 * np.pi, size=3)
    u = (z + _HALF_Z) / (2 * _HALF_Z)
    curve = sum(w * np.cos(np.pi * k * u + p) for k, (w, p) in enumerate(zip(weights, phases), start=1))
    return curve.astype(np.float32)  # float32 keeps every full-volume expression it enters in float32


def _tube(x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray, rx: float, ry: float) -> np.ndarray:
    """Inside an elliptic tube whose centre ``(cx, cy)`` follows z; radii in mm."""
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _capsule(x: np.ndarray, y: np.ndarray, z: np.ndarray, p0: np.ndarray, p1: np.ndarray, radius: float) -> np.ndarray:
    """Inside the capsule of ``radius`` (mm) around the segment ``p0``-``p1``; used for bronchi and vessels."""
    p0, axis = [float(v) for v in p0], [float(v) for v in p1 - p0]  # Python floats: stay in float32
    along = (x - p0[0]) * axis[0] + (y - p0[1]) * axis[1] + (z - p0[2]) * axis[2]
    t = np.clip(along / sum(v * v for v in axis), 0.0, 1.0)
    return (x - p0[0] - t * axis[0]) ** 2 + (y - p0[1] - t * axis[1]) ** 2 + (z - p0[2] - t * axis[2]) ** 2 <= radius**2


def make_thorax_case(seed: int, preset: str = "small") -> GeneratedCase:
    """Generate one procedural thoracic CT case from its seed.

    Args:
        seed: the case seed; the same seed gives identical arrays.
        preset: ``"paper"`` ``(320, 320, 96)`` at 1.2 x 1.2 x 3 mm, ``"small"`` ``(128, 128, 48)`` at 3 x 3 x 6 mm,
            or ``"tiny"`` ``(32, 32, 16)`` at 12 x 12 x 18 mm.

    Returns:
        ``image`` ``(H, W, D)`` int16 HU, ``label`` ``(H, W, D)`` uint8 with values :data:`THORAX_LABELS`, and the
        diagonal RAS ``(4, 4)`` ``affine``.
    """
    shape, spacing = _check_preset(preset)
    grid = Grid.ras(shape, spacing, center=np.zeros(3))
    rng = np.random.default_rng(seed)
    u = rng.uniform
    # voxel centres in mm; z stays separable (1, 1, D) so z-only quantities cost one slice's worth of work
    centres = [(grid.affine[a, a] * np.arange(n) + grid.affine[a, 3]).astype(np.float32) for a, n in enumerate(shape)]
    x0, y0, z = centres[0][:, None, None], centres[1][None, :, None], centres[2][None, None, :]
    # thin tubes never get thinner than ~one voxel, so every organ stays present and connected on coarse grids
    floor = 0.8 * max(spacing[0], spacing[1])

    # 1. body: a superellipse whose radii drift along z; depth = mm from the skin along the ray from its centre
    bx, by, p = u(-6, 6), u(-8, 8), u(2.1, 2.6)
    # radii bounded so that the body, warped, stays ~1 cm inside the 384 mm field of view
    a_body = u(140, 160) * (1 + np.clip(_z_curve(rng, z, 0.05), -0.06, 0.06))
    b_body = u(100, 120) * (1 + np.clip(_z_curve(rng, z, 0.05), -0.06, 0.06))
    fat_t, muscle_t, rib_t = u(6, 22), u(8, 14), u(6, 10)
    wall = fat_t + muscle_t + rib_t
    # 2. spine and mediastinum, positioned from the back (posterior) surface forwards
    x_mid = bx + _z_curve(rng, z, 3.0)
    y_cord = by - b_body.mean() + u(55, 70) - u(5, 15) * (1 - (z / _HALF_Z) ** 2) + _z_curve(rng, z, 3.0)
    cord_r = (max(u(5.5, 7.5), floor), max(u(4.5, 6.0), floor))
    ring = max(u(4.0, 6.0), 1.05 * max(spacing[0], spacing[1]))  # bone all round the cord, at least a voxel thick
    vb_dy, vb_r = u(24, 30) + cord_r[1] - 5, (u(17, 23), u(13, 17))
    y_vb = y_cord + vb_dy
    disc_period, disc_phase = u(24, 30), u(0, 1)
    eso_x = x_mid + u(4, 10) + _z_curve(rng, z, 3.0)
    eso_r = (max(u(7, 10), floor), max(u(5, 8), floor))
    eso_y = y_vb + vb_r[1] + u(4, 8) + eso_r[1] + _z_curve(rng, z, 2.0)
    eso_bottom = u(5, 15)  # mm below the left dome, where the oesophagus passes into the abdomen
    carina = u(5, 35)
    tra_r = (max(u(8, 11), floor), max(u(7, 10), floor))
    tra_x = x_mid + u(-5, 0) + _z_curve(rng, z, 2.0)
    tra_y0 = eso_y.mean() + eso_r[1] + tra_r[1] + u(2, 6)
    tra_y = tra_y0 + u(0.1, 0.25) * (z - carina)  # the trachea runs forwards as it rises towards the neck
    carina_pt = np.array([tra_x.mean(), tra_y0, carina])
    bronchus_l = carina_pt + [u(35, 50), u(-10, 0), -u(20, 35)]
    bronchus_r = carina_pt + [-u(25, 35), u(-10, 0), -u(25, 40)]
    bronchus_radius = max(u(5.5, 7.5), floor)
    apex, apex_drop = u(110, 135), u(40, 70)
    dome_r = u(-85, -55)
    dome_l, dome_drop = dome_r - u(10, 25), u(40, 60)
    heart_c = np.array([x_mid.mean() + u(20, 35), eso_y.mean() + u(45, 60), dome_l + u(30, 50)])
    heart_radii = np.array([u(60, 75), u(45, 55), u(38, 48)])
    long_axis = np.array([1.0, 0.8, -0.8]) + rng.normal(0, 0.15, size=3)  # base (back-right-up) to apex
    twist = u(-0.4, 0.4)  # roll of the heart about its long axis (radians)
    aorta_r, aortic_arch = max(u(10, 14), floor), min(carina + u(15, 30), 125.0)
    asc = np.array([x_mid.mean() + u(0, 8), tra_y0 + u(30, 40), heart_c[2]])
    desc = np.array([x_mid.mean() + u(26, 34), y_vb.mean() + u(4, 12), aortic_arch])
    svc = np.array([x_mid.mean() - u(18, 26), tra_y0 + u(15, 30), heart_c[2]])
    svc_radius, slab, pericardium = max(u(7, 10), floor), u(8, 14), u(3, 7)
    envelope = (u(22, 32), u(-4, 6))  # half-width and x offset of the mediastinum between spine and sternum
    rib_period, rib_slope, rib_phase = u(26, 32), u(0.2, 0.4), u(0, 1)
    lung_hu, dependent_hu, noise_sd = u(-880, -840), u(20, 60), u(8, 20)
    # smooth fields: coarse draws of fixed size, so the anatomy does not depend on the preset
    warp = smooth_random_field(rng, shape, control_points=5, amplitude=6.0, channels=2).numpy()
    texture = smooth_random_field(rng, shape, control_points=8, amplitude=1.0, channels=2).numpy()
    vessels = smooth_random_field(rng, shape, control_points=20, amplitude=1.0, channels=2).numpy()

    x, y = x0 + warp[0], y0 + warp[1]
    xb, yb = x - bx, y - by
    gauge = (np.abs(xb / a_body) ** p + np.abs(yb / b_body) ** p) ** (1 / p)
    rho = np.hypot(xb, yb)
    depth = np.where(gauge > 1e-3, rho * (1 / np.maximum(gauge, 1e-3) - 1), 100.0)
    body = depth > 0

    # 3. organs and image-only structures
    cord = _tube(x, y, x_mid, y_cord, *cord_r)
    canal_bone = _tube(x, y, x_mid, y_cord, cord_r[0] + ring, cord_r[1] + ring)
    vb = _tube(x, y, x_mid, y_vb, *vb_r)
    level = (z / disc_period + disc_phase) % 1.0  # position within one vertebra: disc at 0..0.2
    arch_bone = (
        (  # spinous and transverse processes, one pair per vertebra rather than a continuous rod
            ((np.abs(x - x_mid) < 0.35 * ring + 3) & (y < y_cord) & (y > y_cord - cord_r[1] - ring - 22))
            | ((np.abs(y - y_cord + 4) < 5) & (np.abs(x - x_mid) < cord_r[0] + ring + 22))
        )
        & (level > 0.3)
        & (level < 0.85)
    )
    spine = canal_bone | vb | arch_bone
    eso = _tube(x, y, eso_x, eso_y, *eso_r) & (z > dome_l - eso_bottom)
    tra_lumen = _tube(x, y, tra_x, tra_y, *tra_r) & (z >= carina)
    tra_lumen |= _capsule(x, y, z, carina_pt, bronchus_l, bronchus_radius)
    tra_lumen |= _capsule(x, y, z, carina_pt, bronchus_r, bronchus_radius)
    tra_wall = _tube(x, y, tra_x, tra_y, tra_r[0] + 2, tra_r[1] + 2) & (z >= carina)
    trachea = tra_lumen | tra_wall
    e1 = long_axis / np.linalg.norm(long_axis)
    side = np.cross(e1, [0.0, 0.0, 1.0])
    side /= np.linalg.norm(side)
    up = np.cross(e1, side)
    heart_axes = (e1, np.cos(twist) * side + np.sin(twist) * up, np.cos(twist) * up - np.sin(twist) * side)
    hx, hy, hz = x - float(heart_c[0]), y - float(heart_c[1]), z - float(heart_c[2])
    heart_q = sum(  # squared normalised ellipsoid radius: <= 1 inside the heart
        ((hx * float(e[0]) + hy * float(e[1]) + hz * float(e[2])) / float(r)) ** 2
        for e, r in zip(heart_axes, heart_radii)
    )
    heart = (heart_q <= 1.0) & (depth > fat_t + muscle_t + 3)  # the anterior chest wall flattens the heart
    aorta = _capsule(x, y, z, asc, asc * [1, 1, 0] + [0, 0, aortic_arch], aorta_r)
    aorta |= _capsule(x, y, z, asc * [1, 1, 0] + [0, 0, aortic_arch], desc, aorta_r)
    aorta |= _tube(x, y, desc[0], desc[1], aorta_r, aorta_r) & (z <= aortic_arch)
    svc_tube = _tube(x, y, svc[0], svc[1], svc_radius, svc_radius) & (z >= svc[2])

    # 4. pleural cavities: inside the ribcage, under domed apices, over domed hemidiaphragms, outside the mediastinum
    side_l = x > x_mid
    # q2: 0 at the top of each dome, ~1 at the lateral and posterior recesses, where the lungs reach lowest
    half_w = 0.35 * a_body.mean()
    q2 = ((x - x_mid - np.where(side_l, 1.2, -1.2) * half_w) / half_w) ** 2 + ((y - by) / b_body.mean()) ** 2
    floor_z = np.where(side_l, dome_l, dome_r) - dome_drop * q2
    cavity = (depth > wall) & (z < apex - apex_drop * q2) & (z > floor_z)
    y_front = by + b_body - wall
    env = _tube(x, y, x_mid + envelope[1], (y_vb + y_front) / 2, envelope[0], (y_front - y_vb) / 2)
    pericardial = heart_q <= (1 + pericardium / heart_radii.mean()) ** 2  # heart plus its rim of pericardial fat
    mediastinum = env | (np.abs(x - x_mid) < slab) | pericardial | aorta | svc_tube
    mediastinum |= _tube(x, y, x_mid, y_vb, vb_r[0] + 4, vb_r[1] + 4) | canal_bone | arch_bone
    mediastinum |= _tube(x, y, eso_x, eso_y, eso_r[0] + 3, eso_r[1] + 3) | trachea
    lungs = cavity & ~mediastinum

    # 5. labels, lowest precedence first (cord > trachea > oesophagus > heart > lungs > body); all inside the body
    label = np.zeros(shape, dtype=np.uint8)
    precedence = ((1, body), (2, lungs & side_l), (3, lungs & ~side_l), (4, heart), (6, eso), (5, trachea), (7, cord))
    for value, mask in precedence:
        label[mask & body] = value

    # 6. image in HU: layered soft tissue, bone, aerated lung with texture and vessels, then blur and noise
    image = np.full(shape, -1000.0, dtype=np.float32)
    soft = 40.0 + 8.0 * texture[0]
    image[body] = np.where(depth < fat_t, -100.0 + 10 * texture[1], soft)[body]
    ribs = (depth > fat_t + 0.4 * muscle_t) & (depth < wall) & (np.abs(x - x_mid) > 22) & (z < apex + 10)
    ribs &= np.cos(2 * np.pi * ((z + rib_slope * y) / rib_period + rib_phase)) > 0.55
    sternum = (np.abs(x - x_mid) < 15) & (y > by) & (depth > fat_t) & (depth < wall) & (z < apex - 30)
    image[ribs | sternum] = 550.0
    mediastinal_fat = cavity & mediastinum & ~(aorta | svc_tube | spine)
    image[mediastinal_fat] = (-80.0 + 15 * texture[1])[mediastinal_fat]
    image[body & (depth > wall) & (z <= floor_z) & ~side_l] = 58.0  # liver under the right hemidiaphragm
    lung_img = lung_hu + 25 * texture[1] + dependent_hu * np.clip((by - y) / b_body + 0.5, 0, 1)
    lung_img += 700 * np.exp(-(vessels[0] ** 2 + vessels[1] ** 2) / (2 * 0.12**2))
    image[lungs] = lung_img[lungs]
    image[aorta | svc_tube] = 42.0
    image[heart] = 45.0
    image[eso] = 38.0
    image[trachea] = 40.0
    image[tra_lumen] = -1000.0
    disc = (level < 0.2) & vb & ~canal_bone
    image[spine] = 450.0
    image[spine & ~_tube(x, y, x_mid, y_vb, vb_r[0] - 2.5, vb_r[1] - 2.5)] = 850.0  # cortical shell
    image[disc] = 90.0
    image[cord] = 30.0
    image[~body] = -1000.0
    # blur ~1 mm (at least half a voxel: partial volume on coarse grids), then mildly correlated noise
    image = gaussian_filter(image, sigma=[max(0.5, 1.0 / s) for s in spacing])
    noise = gaussian_filter(rng.normal(0.0, 1.0, size=shape).astype(np.float32), sigma=0.6)
    image += noise * (noise_sd / max(float(noise.std()), 1e-6))
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return GeneratedCase(image=image, label=label, affine=grid.affine)


def build_thorax_phantom(
    out_dir: str | os.PathLike,
    preset: str = "small",
    sizes: SplitSizes = SplitSizes(25, 5, 10),
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    overwrite: bool = False,
) -> DatasetSpec:
    """Write the ``thorax-phantom`` dataset (CT, :data:`THORAX_LABELS`) into ``out_dir``.

    The default 25/5/10 split mirrors the paper's SegTHOR split. Finished cases are kept, so an interrupted build
    resumes (see :func:`medgen3d.data.builder.build_dataset`).

    Args:
        out_dir: the dataset folder.
        preset: one of :data:`THORAX_PRESETS`.
        sizes: cases per split.
        seed: the dataset seed.
        progress: optional ``callback(done, total, case_id)``.
        overwrite: regenerate into a folder built with other settings.

    Returns:
        The written dataset.
    """
    shape, spacing = _check_preset(preset)

    def make_case(case_seed: int) -> GeneratedCase:
        return make_thorax_case(case_seed, preset)

    # lists, not tuples: the parameters are compared with their JSON round trip when a build resumes
    params = {"preset": preset, "shape": list(shape), "spacing": list(spacing), "generator_version": _GENERATOR_VERSION}
    return build_dataset(
        out_dir,
        name="thorax-phantom",
        modality="CT",
        labels=THORAX_LABELS,
        make_case=make_case,
        sizes=sizes,
        seed=seed,
        params=params,
        progress=progress,
        overwrite=overwrite,
    )
