"""The ``medgen3d`` command line (python-fire).

::

    medgen3d data brain-mni      --out DIR [--preset small] [--seed 0] [--scanner a|b]
    medgen3d data thorax-phantom --out DIR [--preset small] [--seed 0]
    medgen3d data import SRC OUT --modality CT --spacing "[1.5,1.5,2.5]" [--size "[128,128,96]"] ...
    medgen3d data validate DIR
    medgen3d data subset SOURCE --out DIR --training 5 [--validation N] [--test N]
    medgen3d data restore DATASET VOLUME --case CASE --out FILE
    medgen3d data export-nnunet DATASET [DATASET ...] --out nnUNet_raw --dataset_id 501 [--name NAME]
    medgen3d preview DATASET [--out DIR] [--max_cases 4]
    medgen3d demo [--out demo_output]   (brain-mni -> train every stage -> synthetic pairs -> quality report)
    medgen3d bundle export --models_dir DIR --out OUT [--bundles "[segmentation_eval]"]

Problems with the user's data end the command with a one-line error naming the file, not a traceback.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import numpy as np

from medgen3d.data.builder import SplitSizes
from medgen3d.data.io import DataError
from medgen3d.progress import progress_printer

__all__ = ["main"]


def _triple(value: Any, name: str, kind: type = float) -> tuple | None:
    if value is None:
        return None
    values = [value] * 3 if isinstance(value, (int, float)) else list(value)
    if len(values) != 3:
        raise ValueError(f"--{name} needs one number or three, got {value!r}")
    return tuple(kind(v) for v in values)


def brain_mni(
    out: str | None = None,
    preset: str = "small",
    seed: int = 0,
    num_training: int = 40,
    num_validation: int = 10,
    num_test: int = 10,
    overwrite: bool = False,
    scanner: str = "a",
) -> None:
    """Build the embedded brain MR dataset from the MNI ICBM152 2009a template (presets: paper, small, tiny).

    Args:
        out: the dataset folder (default: data/brain-mni, or data/brain-mni-scanner-b for scanner b).
        scanner: 'a' (brain-mni) or 'b' (brain-mni-scanner-b: the same subjects and labels for the same seed,
            with another scanner's contrast, bias field and noise).
    """
    from medgen3d.data.brain_mni import brain_mni_name, build_brain_mni

    name = brain_mni_name(scanner)
    sizes = SplitSizes(num_training, num_validation, num_test)
    spec = build_brain_mni(
        out or f"data/{name}", preset, sizes, seed, progress_printer(name), overwrite, scanner=scanner
    )
    print(f"{name} ({preset}): {len(spec.cases())} subjects in {spec.root}")


def thorax_phantom(
    out: str = "data/thorax-phantom",
    preset: str = "small",
    seed: int = 0,
    num_training: int = 25,
    num_validation: int = 5,
    num_test: int = 10,
    overwrite: bool = False,
) -> None:
    """Build the embedded procedural thorax CT dataset (presets: paper, small, tiny)."""
    from medgen3d.data.thorax_phantom import build_thorax_phantom

    sizes = SplitSizes(num_training, num_validation, num_test)
    spec = build_thorax_phantom(out, preset, sizes, seed, progress_printer("thorax-phantom"), overwrite)
    print(f"thorax-phantom ({preset}): {len(spec.cases())} cases in {spec.root}")


def import_data(
    source: str,
    out: str,
    modality: str,
    spacing: Any,
    size: Any = None,
    name: str | None = None,
    labels: dict | str | None = None,
    label_map: dict | str | None = None,
    image_glob: str | None = None,
    label_glob: str | None = None,
    center: str = "foreground",
    split: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> None:
    """Import a folder of NIfTI image/label pairs: remap labels, reorient to RAS, resample, crop/pad.

    Args:
        source: the folder holding the pairs.
        out: the new dataset folder.
        modality: CT or MR.
        spacing: target voxel size in mm, one number or three (R, A, S).
        size: target (H, W, D) in voxels; default keeps each case's field of view.
        name: dataset name (default: the source folder's name).
        labels: {value: name} for the dataset labels 0..K-1, as JSON or a JSON file (default: from the data).
        label_map: {source value: dataset value}, as JSON or a JSON file; unlisted values are kept.
        image_glob, label_glob: patterns pairing files by the text matched by `*` (default: imagesTr/labelsTr).
        center: centre the grid on the labelled 'foreground' or on the 'image'.
        split: training/validation/test fractions, or counts adding up to the number of cases.
        seed: seed for shuffling cases into splits.
    """
    from medgen3d.data.importer import (
        ImportSettings,
        find_pairs,
        import_dataset,
        infer_labels,
        parse_label_map,
        read_json_argument,
    )

    pairs = find_pairs(source, image_glob, label_glob)
    mapping = parse_label_map(label_map)
    label_names = (
        {int(k): str(v) for k, v in read_json_argument(labels, "labels").items()}
        if labels
        else infer_labels(pairs, mapping)
    )
    settings = ImportSettings(
        modality=modality,
        spacing=_triple(spacing, "spacing"),
        size=_triple(size, "size", int),
        label_map=mapping,
        labels=label_names,
        center=center,
    )
    spec = import_dataset(
        source,
        out,
        name or Path(source).resolve().name,
        settings,
        pairs,
        tuple(split),
        seed,
        progress_printer("import"),
    )
    print(f"imported {len(spec.cases())} cases into {spec.root}")


def validate(dataset: str) -> None:
    """Check dataset.json and every NIfTI pair it lists; print a summary."""
    from medgen3d.data.validate import validate_dataset

    print(validate_dataset(dataset, progress_printer("validate")).describe())


def subset(source: str, out: str, training: int | None, validation: int | None = None, test: int | None = None) -> None:
    """Copy the first cases of each split of a dataset into a smaller one, for low-data experiments.

    Args:
        source: the dataset folder to take cases from.
        out: the new dataset folder.
        training, validation, test: cases to keep from the start of each split (default: the whole split).
    """
    from medgen3d.data.subset import subset_dataset

    spec = subset_dataset(source, out, training, validation, test)
    counts = ", ".join(f"{split} {len(spec.split(split))}" for split in ("training", "validation", "test"))
    print(f"{spec.name} subset ({counts}) in {spec.root}")


def restore(dataset: str, volume: str, case: str, out: str, mode: str = "nearest") -> None:
    """Write a volume made on an imported case's dataset grid back in that case's original geometry.

    Args:
        dataset: the imported dataset folder.
        volume: a NIfTI on the dataset grid of `case` (a prediction, a refined image).
        case: the case id (its file name without extension).
        out: the NIfTI to write, on the original grid.
        mode: 'nearest' for labels, 'bilinear' for images.
    """
    from medgen3d.data.dataset import read_dataset
    from medgen3d.data.geometry import SourceGeometry, restore_geometry
    from medgen3d.data.io import load_nifti, save_nifti

    spec = read_dataset(dataset)
    geometry = spec.extra.get("medgen3d", {}).get("source_geometry", {})
    if case not in geometry:
        raise DataError(f"{spec.path('dataset.json')}: no source geometry recorded for case {case!r}")
    source = SourceGeometry.from_json(geometry[case])
    data = load_nifti(volume)
    array = data.array if mode != "nearest" else data.array.astype(np.int64)
    restored = restore_geometry(array, data.affine, source, mode=mode)
    save_nifti(out, restored.astype(data.array.dtype), source.affine)
    print(f"wrote {out} on the grid of {source.file} {source.shape}")


def export_nnunet(
    *datasets: str, out: str = "nnUNet_raw", dataset_id: int = 501, name: str | None = None, overwrite: bool = False
) -> None:
    """Export paired datasets (real, synthetic, or both) as one nnU-Net v2 raw dataset under ``out``."""
    from medgen3d.data.nnunet import export_nnunet as export

    folder = export(datasets, out, dataset_id, name, overwrite)
    print(f"nnU-Net raw dataset: {folder.resolve()}")
    print(f"next: nnUNetv2_plan_and_preprocess -d {dataset_id} (with nnUNet_raw={Path(out).resolve()})")


def preview(dataset: str, out: str | None = None, max_cases: int = 4, split: str = "all") -> None:
    """Write PNG montages (axial/coronal/sagittal, with label overlay) of the first cases of a dataset."""
    from medgen3d.preview import preview_dataset

    for path in preview_dataset(dataset, out, max_cases, split):
        print(path)


def demo(out: str = "demo_output", preset: str = "small", bundles: str | None = None) -> None:
    """The main job: build brain-mni, train small versions of every stage on it, generate synthetic pairs and write
    the quality report and previews (the workflow bundle's train, generate and evaluate configs with its demo.json).

    Args:
        out: where the dataset, checkpoints, synthetic pairs and report go.
        preset: the brain-mni preset (``small`` on a CPU).
        bundles: the folder holding the bundles (default: this checkout's ``bundles/``).
    """
    from medgen3d.data.brain_mni import build_brain_mni
    from medgen3d.data.io import write_json
    from medgen3d.data.validate import validate_dataset
    from medgen3d.pipeline.stages import StageBundle
    from medgen3d.pipeline.training import STAGE_NAMES

    start = time.monotonic()
    stages_dir = Path(bundles) if bundles else Path(__file__).resolve().parents[2] / "bundles"
    if not (stages_dir / "medgen3d" / "configs" / "common.json").is_file():
        raise DataError(f"{stages_dir}: the bundles folder was not found; run the demo from a clone of the repository")
    dataset_dir = Path(out) / f"brain-mni-{preset}"
    build_brain_mni(dataset_dir, preset=preset, progress=progress_printer("brain-mni"))
    print(validate_dataset(dataset_dir).describe())
    root = Path(out) / "workflow"
    workflow = StageBundle(stages_dir / "medgen3d", root / "models", root / "eval", overlays=["demo.json"])
    seconds = {"data": time.monotonic() - start}
    common = {"bundle_root": str(root), "stages_dir": str(stages_dir), "dataset_dir": str(dataset_dir)}
    # stage by stage, so that timings.json says where the time went
    tasks = [(stage, "train.json", {"train_stages": [stage]}) for stage in STAGE_NAMES]
    for name, config, extra in [*tasks, ("generate", "generate.json", {}), ("evaluate", "evaluate.json", {})]:
        begin = time.monotonic()
        workflow.run([config], **common, **extra)
        seconds[name] = time.monotonic() - begin
    write_json(root / "timings.json", {name: {"seconds": round(value, 1)} for name, value in seconds.items()})
    synthetic = (root / "eval" / "synthetic").resolve()
    print(f"\nsynthetic pairs:  {synthetic}  (unrefined images in {synthetic / 'unrefined'})")
    print(f"previews:         {synthetic / 'previews'}")
    print(f"quality report:   {(root / 'eval' / 'report' / 'report.md').resolve()}")
    print(f"checkpoints:      {(root / 'models').resolve()}")
    print(f"timings:          {(root / 'timings.json').resolve()}")
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    print(f"total {time.monotonic() - start:.0f} s ({timing})")


def export_bundles(
    models_dir: str, out: str, bundles: Sequence[str] | str | None = None, repo_bundles: str | None = None
) -> None:
    """Export trained stages as model-zoo bundles: ``OUT/<name>/`` with its weights, and ``OUT/<name>_v<ver>.zip``.

    Args:
        models_dir: the trained stages (the workflow's ``models/``: ``mask_mcdpm/``, ``image_vid2vid/``,
            ``sdm_refiner/``, ``segmenter/``), each with ``model.pt`` and ``training_data.json``.
        out: the folder to export into.
        bundles: the bundles to export (default: every one whose weights are found).
        repo_bundles: the folder holding the bundle sources (default: this checkout's ``bundles/``).
    """
    from medgen3d.zoo.export import export_bundles as export

    for bundle in export(models_dir, out, bundles, repo_bundles):
        print(bundle.describe())


COMMANDS = {
    "data": {
        "brain-mni": brain_mni,
        "thorax-phantom": thorax_phantom,
        "import": import_data,
        "validate": validate,
        "subset": subset,
        "restore": restore,
        "export-nnunet": export_nnunet,
    },
    "preview": preview,
    "demo": demo,
    "bundle": {"export": export_bundles},
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medgen3d`` command; returns the exit status."""
    try:
        fire.Fire(COMMANDS, command=list(argv) if argv is not None else None, name="medgen3d")
    except (DataError, ValueError, ImportError) as err:
        print(f"medgen3d: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
