"""benchmarks/quality_benchmark.OtherLoad: the cores other processes keep busy during a span, this process apart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux's /proc/stat")


def _machine_busy_seconds() -> float:
    from quality_benchmark import _cpu_ticks

    return _cpu_ticks()[0] / os.sysconf("SC_CLK_TCK")


def test_another_process_spinning_counts_as_about_a_core():
    from quality_benchmark import OtherLoad

    meter = OtherLoad()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(2.0)
        busy, described = meter.cores(), meter.describe()
    finally:  # read before waiting: a waited-for child's CPU time counts as this process's own
        spinner.kill()
        spinner.wait()
    assert busy >= 0.5, busy
    assert described.startswith("shared ("), described


def test_this_processes_own_work_is_left_out():
    from quality_benchmark import OtherLoad

    meter, machine_0, start, cpu_0 = OtherLoad(), _machine_busy_seconds(), time.monotonic(), time.process_time()
    end = start + 1.5
    while time.monotonic() < end:  # a core of our own for 1.5 s, or what the machine's other work leaves us
        pass
    others = meter.cores()
    wall = time.monotonic() - start
    machine, own = (_machine_busy_seconds() - machine_0) / wall, (time.process_time() - cpu_0) / wall
    assert own >= 0.05, own  # some work of our own, however busy the machine (a loaded 2-core CI: a tenth)
    # the machine's busy cores less other work is our own (clock ticks: 10 ms granularity)
    assert machine - others == pytest.approx(own, abs=0.15), (machine, others, own)
