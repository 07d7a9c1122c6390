"""scripts/gpu_bench.sh, exercised on a machine without a GPU: it must still write its summary
into the folder it is given (and nowhere else in the repository), at most 9 files, report every
step, fail (exit 1) because nothing could be checked, and keep its step limits under 8 minutes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_bench.sh"


def test_step_limits_fit_the_window():
    text = SCRIPT.read_text()
    limits = [int(m) for m in re.findall(r'run_step "[^"]+" (\d+) ', text)]
    assert len(limits) >= 6
    assert sum(limits) <= 480, limits  # the whole under 8 minutes
    assert 'PY=${PYTHON:-python3}' in text  # the GPU image has python3, not python
    assert "../shared" not in text and "--no-index" in text  # offline, repository only


@pytest.mark.skipif(sys.platform != "linux", reason="bash script for the Linux GPU machine")
def test_runs_without_a_gpu_and_writes_only_its_folder(tmp_path):
    out = tmp_path / "results"
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    env = dict(os.environ, PYTHON=sys.executable, GPU_BENCH_SKIP_INSTALL="1", GPU_BENCH_BUDGET_S="120",
               GSPLAT2D_TIER_DEVICE="cuda")
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run(["bash", str(SCRIPT), str(out)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    files = sorted(p.name for p in out.iterdir())
    assert res.returncode == 1, res.stdout + res.stderr  # no CUDA here: nothing was checked
    assert 0 < len(files) <= 9 and "summary.md" in files, files
    summary = (out / "summary.md").read_text()
    for step in ("CUDA correctness tier", "kernel timings", "workload scenes vs the model's estimate",
                 "SR: 60 training steps", "SR: demo"):
        assert step in summary, summary
    assert "no test ran" in summary
    # the workload step fails at once without CUDA (one line in the log), its markdown is appended
    assert re.search(r"- workload scenes vs the model's estimate \(bench/gpu_workload.py\): FAILED, exit 1 \(\d+ s", summary), summary
    assert "## Workload scenes: measured vs the model's estimate" in summary and "no CUDA device: nothing measured" in summary
    assert "gpu_workload: no CUDA device" in (out / "kernels.log").read_text()
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before, "the script wrote into the repository"
