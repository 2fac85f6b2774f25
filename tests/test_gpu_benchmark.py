"""benchmarks/gpu_benchmark.py runs end to end on a CPU at tiny sizes and writes every measurement it promises."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medgen3d.precision import bf16_on_cpu

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("mask_mcdpm", "image_vid2vid", "sdm_refiner", "segmentation_eval")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_the_gpu_benchmark_smoke_runs_on_a_cpu_and_writes_every_measurement(tmp_path):
    command = [sys.executable, "benchmarks/gpu_benchmark.py", "--device", "cpu", "--tiny", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    assert {"torch", "cuda", "gpu", "device", "monai"} <= set(results["environment"])
    settings = results["settings"]
    auto = "bfloat16" if bf16_on_cpu() else "off (float32)"  # "auto" on this CPU
    assert settings["precision"] == "auto" and settings["autocast_dtype"] == auto
    assert results["skipped"] == [] and results["errors"] == []
    assert set(results["anatomies"]) == {"brain", "thorax"}
    for anatomy, parts in results["anatomies"].items():
        assert len(parts["shape"]) == 3
        for stage in STAGES:
            trained = parts["training"][stage]
            for key in ("iterations_per_second", "samples_per_second", "step_seconds_per_iteration"):
                assert _positive(trained[key]), (anatomy, stage, key, trained)
            largest = parts["max_batch"][stage]
            assert largest["largest_fitting"] >= trained["batch"] and largest["stopped_by"] in ("limit", "time")
        generation = parts["generation"]
        for stage in ("mask", "image", "refinement"):
            assert _positive(generation[stage]["seconds_per_pair"]), (anatomy, stage, generation[stage])
        assert _positive(generation["seconds_per_pair"])
    page = (tmp_path / "gpu_benchmark.md").read_text()
    assert all(stage in page for stage in STAGES) and "**pair**" in page


def test_a_stage_past_its_cap_is_recorded_as_cut_short_and_the_next_stages_still_run(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_benchmark as benchmark
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    run = benchmark.Run("cpu", "auto", True, 120.0, tmp_path / "out", tmp_path)
    run.caps = {**run.caps, "mask": 0.0}  # the first network forward of the mask stage is past the deadline
    run.datasets["thorax"], _ = benchmark.build_case("thorax", tmp_path / "thorax-data", "tiny")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script's tiny runs: threads waiting on a busy core would hit the caps
    try:
        benchmark.measure_generation(run, "thorax", 1)
    finally:
        torch.set_num_threads(threads)
    generation = json.loads((tmp_path / "out" / "gpu_benchmark.json").read_text())["anatomies"]["thorax"]["generation"]
    assert generation["mask"]["completed"] is False and "seconds_per_pair" not in generation["mask"]
    assert _positive(generation["image"]["seconds_per_pair"]) and _positive(
        generation["refinement"]["seconds_per_pair"]
    )
    assert "seconds_per_pair" not in generation  # no whole pair was timed
