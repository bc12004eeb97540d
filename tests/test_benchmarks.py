"""Every script in benchmarks/ runs to the end in its smoke mode, and ``tox -e bench`` lists it (issue 18).

A benchmark calls protobench's internals (the harness's shared pass, metric states, model builders), so a
signature change can break it without any other test noticing; here each runs as ``python
benchmarks/<name>.py --smoke`` (tiny sizes, one thread), two at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Modules the benchmarks import, not benchmarks themselves.
HELPERS = {"timing.py"}
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name not in HELPERS)
#: Smoke runs at once (each on one thread), and the longest one may take.
PARALLEL, TIMEOUT_S = 2, 300


def smoke(script: str) -> subprocess.CompletedProcess | subprocess.TimeoutExpired:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run([sys.executable, f"benchmarks/{script}", "--smoke"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as timeout:
        return timeout


@pytest.fixture(scope="module")
def smoke_runs() -> dict[str, subprocess.CompletedProcess | subprocess.TimeoutExpired]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(SCRIPTS, pool.map(smoke, SCRIPTS)))


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_in_smoke_mode(script, smoke_runs):
    if script == "region_speed.py":
        pytest.importorskip("cv2", reason="region_speed.py compares with OpenCV (the `bench` extra)")
    run = smoke_runs[script]
    assert not isinstance(run, subprocess.TimeoutExpired), f"{script} --smoke ran past {TIMEOUT_S} s"
    assert run.returncode == 0, f"{script} --smoke failed:\n{run.stderr[-4000:]}"


def test_tox_bench_runs_every_benchmark():
    bench = (ROOT / "tox.ini").read_text().split("[testenv:bench]")[1].split("\n[")[0]
    assert [s for s in SCRIPTS if f"python benchmarks/{s}" not in bench] == []
