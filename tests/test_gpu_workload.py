"""bench/gpu_workload.py (the GPU window's workload step) on the CPU: its scenes are the model's,
its estimate lookup reads the right fields, a wrong result is never timed, a right one is timed
and put next to the estimate. Each test names the plausible wrong implementation it catches."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import bench_module, requires_triton

ROOT = Path(__file__).resolve().parents[1]
gw = bench_module("gpu_workload")
wl = bench_module("workload")


def test_random_scene_is_the_models():
    # built by workload.build_scene: same seed and size; wrong: a copy with another seed, W and H
    # swapped, or the covariance passed where the rasterizer wants the conic (all bin differently)
    launch, info = gw.build("random-1080p-100k")
    ref, _ = wl.build_scene("random-1080p-100k", Path("/nonexistent"), Path("/nonexistent"))
    img, rimg = launch.images[0], ref[0].images[0]
    assert (img.width, img.height, img.means.shape[0], launch.mode, launch.C) == (1920, 1080, 100_000, "alpha", 3)
    assert np.array_equal(img.means, rimg.means) and np.array_equal(img.conics, rimg.conics)
    m, q, c, o = gw.scene_tensors(launch, "cpu")
    assert m.dtype == torch.float32 and torch.equal(m, torch.as_tensor(rimg.means, dtype=torch.float32))
    assert torch.equal(q, torch.as_tensor(rimg.conics, dtype=torch.float32))
    assert c.shape == (100_000, 3) and torch.equal(c, gw.scene_tensors(launch, "cpu")[2])  # seeded
    # binned through the public stage, the pair count is the model's exactly
    import gsplat2d

    b = gsplat2d.bin_gaussians(m, q, o, 1920, 1080, backend="torch")
    assert int(b.binning.gauss_ids.numel()) == gw.load_estimate("random-1080p-100k")["pairs"] == 445_887


def test_estimate_lookup_reads_own_mode_and_alpha_c3():
    doc = json.loads(gw.ESTIMATE.read_text())["scenes"]
    e = gw.load_estimate("random-1080p-100k")
    # microseconds (wrong: seconds, or milliseconds)
    assert 80 < e["ours_us"]["fwd"] < 90 and 220 < e["ours_us"]["bwd"] < 230
    assert e["ours_us"] == e["ours_alpha_c3_us"] and e["mode"] == "alpha" and e["C"] == 3
    # a sum_taper C = 16 scene: own mode and alpha C = 3 differ; wrong: swapping them, or reading
    # gsplat's numbers as ours
    s = gw.load_estimate("single-512")
    assert (s["mode"], s["C"], s["pairs"]) == ("sum_taper", 16, doc["single-512"]["pairs_ours"])
    for who in ("ours", "ours_alpha_c3", "gsplat"):
        for k in ("fwd", "bwd"):
            assert s[f"{who}_us"][k] == pytest.approx(doc["single-512"][who][k]["t_s"] * 1e6)
    assert s["ours_us"]["fwd"] > 1.5 * s["ours_alpha_c3_us"]["fwd"]
    assert gw.load_estimate("no-such-scene") is None


def _fake_estimate(tmp_path, name, pairs, fwd_s=2e-5, bwd_s=5e-5):
    t = lambda f, b: {"fwd": {"t_s": f}, "bwd": {"t_s": b}}  # noqa: E731
    doc = {"label": "ESTIMATE (test)", "scenes": {name: {
        "pairs_ours": pairs, "pairs_gsplat": pairs + 1, "info": {"mode": "alpha", "C": 3},
        "ours": t(fwd_s, bwd_s), "ours_alpha_c3": t(fwd_s, bwd_s), "gsplat": t(3 * fwd_s, 3 * bwd_s)}}}
    path = tmp_path / "estimate.json"
    path.write_text(json.dumps(doc))
    return path


def _dry_pairs():
    launch, _ = gw.build(gw.DRY_RUN_SCENE)
    return int(wl.our_tile_lists(launch.images[0])[1].size)


class _Timer:
    """Stand-in for do_bench: calls fn once, records every call, returns a time (ms) that tells
    the timed stage apart (by the function's name in gpu_workload.measure)."""

    MS = {"bin_": 1.0, "fwd_kernel": 2.0, "fwd": 3.0, "bwd": 4.0, "fwdbwd": 5.0}

    def __init__(self):
        self.calls = 0

    def __call__(self, fn, grad_to_none=None):
        self.calls += 1
        fn()
        return self.MS[fn.__name__]


def _wrong_renderers(kind):
    real = gw.renderers

    def fake(W, H, mode, backend):
        good = real(W, H, mode, "torch")
        if backend == "torch":
            return good
        r = good["rasterize"]
        if kind == "image":  # 2 % too bright
            bad = lambda m, q, c, o: tuple(t * s for t, s in zip(r(m, q, c, o), (1.02, 1.0)))  # noqa: E731
        else:  # same image, conic gradient 1.5x (wrong: checking the forward only)
            bad = lambda m, q, c, o: r(m, q + 0.5 * (q - q.detach()), c, o)  # noqa: E731
        return {"rasterize": good["rasterize"], "bin+rasterize_binned": bad}

    return fake


@pytest.mark.parametrize("kind", ["image", "gradient"])
def test_wrong_result_is_refused_and_never_timed(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(gw, "renderers", _wrong_renderers(kind))
    timer = _Timer()
    est = _fake_estimate(tmp_path, gw.DRY_RUN_SCENE, _dry_pairs())
    (row,) = gw.run_scene(gw.DRY_RUN_SCENE, "cpu", lambda: 100.0, timer, est, backend="fake")
    assert row["status"] == "wrong: not timed" and timer.calls == 0 and "us" not in row
    # every path is checked (wrong: checking only rasterize), the good one passes
    assert row["check"]["rasterize"]["ok"] and not row["check"]["bin+rasterize_binned"]["ok"]
    if kind == "gradient":
        assert row["check"]["bin+rasterize_binned"]["image_max_abs"] == 0.0
        assert row["check"]["bin+rasterize_binned"]["grad_conics_rel_rms"] == pytest.approx(0.5, rel=1e-3)
    # and the script says so: exit 1, the row in the markdown
    monkeypatch.setattr(gw, "wall_ms", timer)
    out, md = tmp_path / "w.json", tmp_path / "w.md"
    monkeypatch.setattr(gw, "BACKEND", "fake")
    assert gw.main(["--device", "cpu", "--out", str(out), "--md", str(md), "--estimate", str(est)]) == 1
    assert "wrong: not timed" in md.read_text() and timer.calls == 0


def test_right_result_is_timed_next_to_the_estimate(tmp_path):
    pairs = _dry_pairs()
    est = _fake_estimate(tmp_path, gw.DRY_RUN_SCENE, pairs)
    timer = _Timer()
    (row,) = gw.run_scene(gw.DRY_RUN_SCENE, "cpu", lambda: 100.0, timer, est, backend="torch")
    assert row["status"] == "ok" and row["check"]["ok"], row
    # bin, forward kernel alone, forward with binning, backward, forward+backward
    assert timer.calls == 5 and set(row["us"]) == {"bin", "fwd_kernel", "fwd", "bwd", "fwdbwd"}
    assert row["us"] == pytest.approx({"bin": 1000.0, "fwd_kernel": 2000.0, "fwd": 3000.0, "bwd": 4000.0,
                                       "fwdbwd": 5000.0})  # ms -> us, each stage its own timing
    assert row["pairs_binned"] == pairs and "gpu_us" not in row  # no profiler without CUDA
    # measured / estimated on the kernel-only forward (wrong: on the forward with binning, which
    # the model does not estimate) and the backward
    assert row["ratio_basis"] == "do_bench"
    assert row["measured_over_estimate"]["fwd"] == pytest.approx(2000.0 / 20.0)
    assert row["measured_over_estimate"]["bwd"] == pytest.approx(4000.0 / 50.0)
    assert row["pairs_per_s"]["fwd_kernel"] == pytest.approx(pairs / 2e-3)
    assert row["pairs_per_s"]["bwd"] == pytest.approx(pairs / 4e-3)
    md = gw.markdown({"environment": gw.environment(), "estimate": str(est), "timing": "t", "pairs_definition": "p",
                      "rows": [row], "skipped": [], "errors": []})
    assert f"{pairs:,} / {pairs:,}" in md and "20.0 / 50.0; 20.0 / 50.0" in md and "100.00, 80.00" in md


def test_scene_that_bins_otherwise_is_an_error(tmp_path):
    # wrong: timing a scene that is not the model's and comparing it with the model anyway
    est = _fake_estimate(tmp_path, gw.DRY_RUN_SCENE, _dry_pairs() + 10)
    (row,) = gw.run_scene(gw.DRY_RUN_SCENE, "cpu", lambda: 100.0, _Timer(), est, backend="torch")
    assert row["status"].startswith("scene differs from the model's")


@requires_triton
def test_dry_run_triton_through_the_public_api(tmp_path):
    out, md = tmp_path / "w.json", tmp_path / "w.md"
    est = _fake_estimate(tmp_path, gw.DRY_RUN_SCENE, _dry_pairs())
    assert gw.main(["--device", "cpu", "--out", str(out), "--md", str(md), "--estimate", str(est)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["backend"] == "triton" and row["status"] == "ok"
    assert row["check"]["rasterize"]["ok"] and row["check"]["bin+rasterize_binned"]["ok"]
    assert "| dry-run-32x16-12 | triton | alpha, 3 |" in md.read_text()


def test_device_time_counts_device_events_only():
    from torch.autograd import DeviceType

    ev = lambda name, dev, t: SimpleNamespace(name=name, device_type=dev, device_time_total=t)  # noqa: E731
    events = [ev("aten::zeros", DeviceType.CPU, 40.0), ev("fill", DeviceType.CUDA, 10.0),
              ev("rasterize_fwd", DeviceType.CPU, 60.0), ev("rasterize_fwd_kernel", DeviceType.CUDA, 30.0),
              ev("rasterize_fwd_kernel", DeviceType.CUDA, 30.0)]
    # wrong: adding the CPU ops' device time (their kernels' again) gives 85 per call
    assert gw.device_us_per_call(events, 2) == {"fill": 5.0, "rasterize_fwd_kernel": 30.0, "total": 35.0}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_without_cuda_one_line_and_exit_1(tmp_path):
    t = time.monotonic()
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_workload.py"), "--out", str(tmp_path / "w.json"),
                          "--md", str(tmp_path / "w.md")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and time.monotonic() - t < 60
    assert res.stderr.strip().splitlines() == [
        "gpu_workload: no CUDA device (torch.cuda.is_available() is False): nothing measured"]
    assert json.loads((tmp_path / "w.json").read_text())["errors"] == ["no CUDA device: nothing measured"]
