"""Check the segmentation_eval bundle with the real MONAI Label package (``BundleInferTask``, ``BundleTrainTask``).

The check loads a bundle folder the way a MONAI Label server does (``monailabel.tasks.infer.bundle.BundleInferTask``
with ``configs/inference.json``, ``configs/metadata.json`` and ``models/model.pt``), segments one NIfTI volume
through the task's own ``__call__`` (pre-transforms, inferer, post-transforms, ``Restored``, its ITK writer), and
checks that the label file it writes has the input's shape and affine and only values of the bundle's label set
(``network_data_format.outputs.pred.channel_def``). It then segments the same volume with the bundle's own
``inference.json`` run (``ConfigWorkflow``, ``SaveImaged``) and requires the two label maps to be equal, and builds
``BundleTrainTask`` from ``configs/train.json``. ``--train --dataset DIR`` also runs one MONAI Label training epoch
(``BundleTrainTask.__call__`` with a datastore of DIR's ``images/``+``labels/`` pairs). MONAI Label overrides only
``bundle_root``, ``device``, ``train#trainer#max_epochs``, ``train#dataset#data``, ``validate#dataset#data`` and
``train#handlers``, so every other id of ``train.json`` must resolve from the bundle alone.

MONAI Label needs its own virtual environment: monailabel 0.8.5 (the newest release on PyPI) pins ``numpy<2``
(through numpymaxflow and pydicom-seg) and needs ``pydicom<3``, so it must never go into the project's venv.
Set-up (about 3.7 GB, 3 minutes; Python 3.11; ``torch==2.13.0`` resolves to the machine's local CPU build)::

    python3 -m venv /tmp/monailabel-venv
    /tmp/monailabel-venv/bin/pip install torch==2.13.0
    printf 'torch==2.13.0+cpu\\nnumpy<2\\npydicom<3\\n' > /tmp/ml-constraints.txt
    /tmp/monailabel-venv/bin/pip install -c /tmp/ml-constraints.txt monailabel==0.8.5 monai==1.6.1
    /tmp/monailabel-venv/bin/pip install -c /tmp/ml-constraints.txt /path/to/a/copy/of/this/repo
    # (or `pip install -e .` from the repo root; the copy only avoids writing an egg-info into the checkout)

With a CPU build of torch, ``import torchvision`` fails: PyPI only has CUDA builds of torchvision (0.28.0+cu130
here), whose ``_C.so`` needs ``libc10_cuda.so``, so the op ``torchvision::nms`` is never defined and
``torchvision/_meta_registrations.py`` raises ``RuntimeError: operator torchvision::nms does not exist``
(pytorch/pytorch#122494). ``BundleInferTask`` imports torchvision only for ``make_grid``/``save_image``
(``monailabel/transform/post.py``), which this check never calls. ``--torchvision-shim`` declares the two op
schemas (``nms``, ``qnms``) without kernels before the import, so torchvision imports and its C++ ops stay
unusable. With PyPI's CUDA build of torch no shim is needed (a 7.5 GB venv; ``pip --isolated`` skips the local
wheel folder and ``===`` excludes ``+cpu``)::

    /tmp/monailabel-cuda-venv/bin/pip --isolated install "torch===2.13.0" "monai==1.6.1" "monailabel==0.8.5" \
        "numpy<2" "pydicom<3"

Run (the first step trains a throw-away copy of the bundle for a few iterations on a synthetic 5-label dataset;
it runs in the project venv or in the MONAI Label venv)::

    .venv/bin/python benchmarks/monailabel_check.py --prepare --bundle /tmp/seg_bundle
    /tmp/monailabel-venv/bin/python benchmarks/monailabel_check.py --torchvision-shim \\
        --bundle /tmp/seg_bundle --image /tmp/seg_bundle_data/images/case-4.nii.gz

The exit status is 0 when every check passes, 1 when a check fails, and 2 when the environment cannot run it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCE_BUNDLE = REPO / "bundles" / "segmentation_eval"

# geometry of the synthetic volumes: not RAS (x flipped), anisotropic, origin away from zero, so a lost or
# un-inverted orientation or affine shows in the output
SHAPE = (40, 36, 20)
AFFINE = np.array([[-1.5, 0.0, 0.0, 24.0], [0.0, 1.2, 0.0, -20.0], [0.0, 0.0, 2.0, 30.0], [0.0, 0.0, 0.0, 1.0]])


class CheckFailed(Exception):
    """A check that did not pass."""


class EnvironmentProblem(Exception):
    """The environment cannot run the check."""


def say(message: str) -> None:
    print(message, flush=True)


def check(condition: bool, what: str, detail: str = "") -> None:
    """Print ``what`` with PASS/FAIL; raise :class:`CheckFailed` on failure."""
    say(f"  [{'PASS' if condition else 'FAIL'}] {what}{f' ({detail})' if detail else ''}")
    if not condition:
        raise CheckFailed(f"{what}{f': {detail}' if detail else ''}")


# ------------------------------------------------------------------------------------------------------------------
# --prepare: a tiny trained copy of the bundle
# ------------------------------------------------------------------------------------------------------------------


def _channel_def(bundle: Path) -> dict[int, str]:
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    return {int(k): v for k, v in meta["network_data_format"]["outputs"]["pred"]["channel_def"].items()}


def write_synthetic_dataset(root: Path, labels: dict[int, str], cases: int = 5, seed: int = 0) -> Path:
    """A medgen3d-format dataset (3 training, 1 validation, the rest test) with the bundle's label set: label ``k``
    fills the ``k``-th band of slices inside a centred box, shifted per case; the image is ``100 * label`` plus
    noise."""
    from medgen3d.data.dataset import Case, DatasetSpec, write_dataset
    from medgen3d.data.io import save_nifti

    rng = np.random.default_rng(seed)
    h, w, d = SHAPE
    foreground = sorted(k for k in labels if k != 0)
    items = []
    for i in range(cases):
        label = np.zeros(SHAPE, dtype=np.uint8)
        for z in range(d):
            band = min(len(foreground) - 1, ((z + i) % d) * len(foreground) // d)
            label[h // 4 : 3 * h // 4, w // 5 : 4 * w // 5, z] = foreground[band]
        image = 100.0 * label + rng.normal(0.0, 5.0, SHAPE)
        case = Case(image=f"images/case-{i}.nii.gz", label=f"labels/case-{i}.nii.gz")
        save_nifti(root / case.label, label, AFFINE)
        save_nifti(root / case.image, image.astype(np.float32), AFFINE)
        items.append(case)
    spec = DatasetSpec(
        name="monailabel-check",
        modality="MR",
        labels=dict(labels),
        training=items[:3],
        validation=items[3:4],
        test=items[4:],
    )
    write_dataset(root, spec)
    return root


def prepare(bundle: Path, data: Path, source: Path, iterations: int, overwrite: bool) -> None:
    """Copy ``source`` to ``bundle`` (configs unchanged) and train it for ``iterations`` steps on a synthetic dataset
    written to ``data``, so that ``bundle/models/model.pt`` exists."""
    from monai.bundle import ConfigWorkflow

    for folder in (bundle, data):
        if folder.exists():
            if not overwrite:
                raise EnvironmentProblem(f"{folder} exists; pass --overwrite to replace it")
            shutil.rmtree(folder)
    shutil.copytree(source, bundle, ignore=shutil.ignore_patterns("models", "eval", "__pycache__"))
    say(f"copied {source} -> {bundle} (configs unchanged)")
    labels = _channel_def(bundle)
    write_synthetic_dataset(data, labels)
    say(f"wrote a synthetic dataset with labels {labels} to {data} (shape {SHAPE}, non-RAS affine)")
    configs = bundle / "configs"
    start = time.time()
    wf = ConfigWorkflow(
        config_file=str(configs / "train.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="train",
        bundle_root=str(bundle),
        dataset_dir=str(data),
        max_iterations=iterations,
        val_interval=iterations,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    model = bundle / "models" / "model.pt"
    if not model.is_file():
        raise CheckFailed(f"training wrote no {model}")
    say(f"trained the bundle's default network for {iterations} iterations in {time.time() - start:.0f} s -> {model}")
    say(
        "next: <monailabel venv>/bin/python "
        f"{Path(__file__).resolve()} --torchvision-shim --bundle {bundle} --image {data / 'images' / 'case-4.nii.gz'}"
    )


# ------------------------------------------------------------------------------------------------------------------
# the check, in the MONAI Label venv
# ------------------------------------------------------------------------------------------------------------------

_SHIM = None  # keeps the torch.library.Library with the declared schemas alive


def import_torchvision(shim: bool) -> str:
    """Import torchvision (monailabel imports it at module level); with ``shim``, declare its NMS op schemas first
    when its C++ extension cannot be loaded."""
    global _SHIM
    try:
        import torchvision

        return f"torchvision {torchvision.__version__}"
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        if not shim:
            raise EnvironmentProblem(
                f"import torchvision failed: RuntimeError: {err}. A CUDA build of torchvision next to a CPU build of "
                "torch cannot load its C++ ops (pytorch/pytorch#122494); rerun with --torchvision-shim, or install "
                "a CUDA build of torch==2.13.0 in this venv"
            ) from err
        first_error = str(err)
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _SHIM = torch.library.Library("torchvision", "DEF")
    _SHIM.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SHIM.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    torchvision = importlib.import_module("torchvision")
    return (
        f"torchvision {torchvision.__version__} WITH SHIM (plain import failed: RuntimeError: {first_error}; "
        f"C++ ops loaded: {torchvision.extension._has_ops()})"
    )


def versions(torchvision_line: str) -> None:
    import monai
    import monailabel
    import torch

    say(f"python {sys.version.split()[0]} ({sys.executable})")
    say(
        f"monailabel {monailabel.__version__}, monai {monai.__version__}, "
        f"torch {torch.__version__}, numpy {np.__version__}"
    )
    say(torchvision_line)
    try:
        import medgen3d
    except ImportError:
        # the environment a MONAI Label server needs for inference: the bundle's inference.json uses MONAI alone
        say("medgen3d: not installed (inference needs nothing but MONAI; --train needs it, for train.json)")
    else:
        say(f"medgen3d from {Path(medgen3d.__file__).parent}")


def static_checks(bundle: Path) -> dict:
    """What BundleInferTask needs from the folder, before it is built."""
    say(f"bundle {bundle}")
    configs = bundle / "configs"
    check((configs / "inference.json").is_file(), "configs/inference.json exists")
    check((configs / "metadata.json").is_file(), "configs/metadata.json exists")
    check((bundle / "models" / "model.pt").is_file(), "models/model.pt exists (else MONAI Label skips the bundle)")
    text = (configs / "inference.json").read_text()
    check("@_meta_" not in text, "inference.json has no @_meta_ reference (MONAI Label parses it without metadata)")
    meta = json.loads((configs / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    check(next(iter(fmt["inputs"])) == "image", "first input of network_data_format is 'image'")
    check(next(iter(fmt["outputs"])) == "pred", "first output of network_data_format is 'pred'")
    return meta


def infer_with_monailabel(bundle: Path, image: Path, meta: dict, verbose: bool) -> tuple[Path, dict, object]:
    from monailabel.tasks.infer.bundle import BundleInferTask

    start = time.time()
    task = BundleInferTask(str(bundle), conf={})
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    expected = {v.lower(): int(k) for k, v in channel_def.items() if v.lower() != "background"}
    say(f"BundleInferTask(path={str(bundle)!r}, conf={{}}) built in {time.time() - start:.1f} s")
    check(task.is_valid(), "task.is_valid()")
    info = task.info()
    say(
        f"  type={info['type']!s}, dimension={info['dimension']}, version={info.get('version')}, "
        f"model_filename={info['config'].get('model_filename')}"
    )
    check(info["labels"] == expected, "task labels = channel_def without background", str(info["labels"]))
    pre = [type(t).__name__ for t in task.pre_transforms({})]
    post = [type(t).__name__ for t in task.post_transforms({})]
    say(f"  MONAI Label pre-transforms: {pre}; inferer: {type(task.inferer({})).__name__}; post-transforms: {post}")
    check("SaveImaged" not in post and post[-1:] == ["Restored"], "SaveImaged filtered out, Restored appended")
    start = time.time()
    request = {"image": str(image), "device": "cpu", "logging": "INFO" if verbose else "WARNING"}
    label_file, result = task(request)
    say(f"task({request}) ran in {time.time() - start:.1f} s")
    check(isinstance(label_file, str) and Path(label_file).is_file(), "the task wrote a label file", str(label_file))
    check(result.get("label_names") == expected, "result['label_names'] = the task labels")
    say(f"  latencies: {result.get('latencies')}")
    return Path(label_file), result, task


def infer_with_bundle(bundle: Path, image: Path, out: Path) -> Path:
    """The same volume through the bundle's own inference.json, as ``python -m monai.bundle run`` would."""
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    wf = ConfigWorkflow(
        config_file=str(configs / "inference.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(bundle),
        datalist=[{"image": str(image)}],
        output_dir=str(out),
        device="$torch.device('cpu')",
    )
    wf.initialize()
    wf.run()
    written = sorted(out.glob("*_seg.nii*"))
    check(len(written) == 1, "the bundle's own inference.json run wrote one segmentation", str(written))
    return written[0]


def compare(label_file: Path, image: Path, meta: dict, bundle_file: Path | None, truth: Path | None) -> None:
    import nibabel as nib

    source = nib.load(str(image))
    label = nib.load(str(label_file))
    array = np.asanyarray(label.dataobj)
    say(f"result {label_file}: shape {array.shape}, dtype {array.dtype}")
    check(array.shape == source.shape[:3], "label shape = input shape", f"{array.shape} vs {source.shape}")
    check(
        np.allclose(label.affine, source.affine, atol=1e-4),
        "label affine = input affine",
        "max difference " + f"{np.abs(label.affine - source.affine).max():.2e}",
    )
    allowed = {int(k) for k in meta["network_data_format"]["outputs"]["pred"]["channel_def"]}
    values = {int(v) for v in np.unique(array)}
    counts = {int(v): int((array == v).sum()) for v in sorted(values)}
    check(
        values <= allowed, "label values within the bundle's label set", f"values {counts}, allowed {sorted(allowed)}"
    )
    if bundle_file is not None:
        own = np.asanyarray(nib.load(str(bundle_file)).dataobj)
        agree = float((own == array).mean()) if own.shape == array.shape else 0.0
        check(
            own.shape == array.shape and agree == 1.0,
            "MONAI Label result = the bundle's own inference.json result, voxel for voxel",
            f"agreement {agree:.4f}",
        )
    if truth is not None:
        reference = np.asanyarray(nib.load(str(truth)).dataobj)
        say(f"  (info) agreement with {truth.name}: {float((reference == array).mean()):.3f} (not checked)")


class _ListDatastore:
    """The one Datastore method BundleTrainTask uses: ``datalist()``."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def datalist(self) -> list[dict]:
        return self.items


def train_task(bundle: Path, dataset: Path | None, run: bool, epochs: int) -> None:
    from monailabel.tasks.train.bundle import BundleTrainTask

    task = BundleTrainTask(str(bundle), conf={})
    say("BundleTrainTask(path=..., conf={}) built")
    check(task.is_valid(), "train task.is_valid() (configs/train.json + metadata.json found)")
    options = task.config()
    say(f"  train options: max_epochs={options['max_epochs']}, model_filename={options['model_filename']}")
    if not run:
        return
    if dataset is None:
        raise EnvironmentProblem("--train needs --dataset (a medgen3d dataset folder with images/ and labels/)")
    import torch

    images = sorted((dataset / "images").glob("*.nii.gz"))
    items = [{"image": str(p), "label": str(dataset / "labels" / p.name)} for p in images]
    last = bundle / "models" / "model_last.pt"
    # the weights training starts from: checkpoint.pt (resumed, = model_last.pt) if present, else model.pt (loaded by
    # the CheckpointLoader MONAI Label inserts for pretrained=True)
    before = torch.load(
        last if last.is_file() else bundle / "models" / "model.pt", map_location="cpu", weights_only=True
    )
    start = time.time()
    request = {"model": bundle.name, "max_epochs": epochs, "device": "cpu", "val_split": 0.2, "multi_gpu": False}
    task(request, _ListDatastore(items))
    say(f"task({request}, datastore of {len(items)} image/label pairs) ran in {time.time() - start:.0f} s")
    check(last.is_file(), "MONAI Label training wrote models/model_last.pt")
    after = torch.load(last, map_location="cpu", weights_only=True)
    changed = any(not torch.equal(before[k], after[k]) for k in after)
    check(changed, "the weights changed (training ran; a checkpoint.pt already at max_epochs would skip it)")


def run_check(args: argparse.Namespace) -> None:
    bundle = args.bundle.resolve()
    if args.image is None:
        raise EnvironmentProblem("--image is required (a 3D NIfTI volume)")
    image = args.image.resolve()
    if not image.is_file():
        raise EnvironmentProblem(f"{image}: no such file")
    versions(import_torchvision(args.torchvision_shim))
    meta = static_checks(bundle)
    label_file, _, _ = infer_with_monailabel(bundle, image, meta, args.verbose)
    try:
        bundle_file = None
        with tempfile.TemporaryDirectory(prefix="monailabel-check-") as tmp:
            if not args.skip_bundle_run:
                bundle_file = infer_with_bundle(bundle, image, Path(tmp))
            compare(label_file, image, meta, bundle_file, args.label)
        if args.output is not None:
            shutil.copyfile(label_file, args.output)
            say(f"copied the MONAI Label result to {args.output}")
    finally:
        label_file.unlink(missing_ok=True)
    train_task(bundle, args.dataset, args.train, args.train_epochs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (with models/model.pt)")
    parser.add_argument("--image", type=Path, help="NIfTI volume to segment")
    parser.add_argument("--label", type=Path, help="reference label of --image: its agreement is printed")
    parser.add_argument("--output", type=Path, help="keep a copy of the MONAI Label result here")
    parser.add_argument(
        "--torchvision-shim",
        action="store_true",
        help="declare torchvision's NMS op schemas if its C++ extension cannot load (CPU torch + CUDA torchvision)",
    )
    parser.add_argument("--skip-bundle-run", action="store_true", help="do not compare with the bundle's own run")
    parser.add_argument("--train", action="store_true", help="also run one MONAI Label training epoch on --dataset")
    parser.add_argument("--dataset", type=Path, help="folder with images/ and labels/ (same names) for --train")
    parser.add_argument("--train-epochs", type=int, default=1, help="max_epochs of the --train request")
    parser.add_argument("--prepare", action="store_true", help="copy --source to --bundle and train it briefly")
    parser.add_argument("--source", type=Path, default=SOURCE_BUNDLE, help="bundle to copy with --prepare")
    parser.add_argument("--data", type=Path, help="synthetic dataset folder for --prepare (default <bundle>_data)")
    parser.add_argument("--iterations", type=int, default=10, help="training iterations for --prepare")
    parser.add_argument("--overwrite", action="store_true", help="with --prepare, replace existing folders")
    parser.add_argument("--verbose", action="store_true", help="show MONAI Label's and MONAI's INFO logs")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stdout)
    try:
        if args.prepare:
            data = args.data or args.bundle.with_name(args.bundle.name + "_data")
            prepare(args.bundle.resolve(), data.resolve(), args.source.resolve(), args.iterations, args.overwrite)
        else:
            run_check(args)
    except CheckFailed as err:
        say(f"FAILED: {err}")
        return 1
    except EnvironmentProblem as err:
        say(f"CANNOT RUN: {err}")
        return 2
    except Exception as err:  # an error inside MONAI Label or MONAI is a failed check, with its traceback
        traceback.print_exc(file=sys.stdout)
        chain = []
        while err is not None:
            chain.append(f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
            err = err.__cause__
        say("FAILED: " + " <- ".join(reversed(chain)))
        return 1
    say("ALL CHECKS PASSED" if not args.prepare else "prepared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
