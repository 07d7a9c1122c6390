"""Training loop: loss goes down, exact resume, atomic outputs, DDP (gloo, 2 processes), AMP,
triton-vs-torch trajectories, CLI errors."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from gsplat2d.sr.model import load_checkpoint
from gsplat2d.train import loop as loop_mod
from gsplat2d.train.cli import main as train_main
from gsplat2d.train.loop import SRLoss, TrainConfig, last_checkpoint_path, train
from conftest import requires_numba, requires_triton


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Random smooth colour image with some edges (upsampled noise + a step)."""
    small = rng.random((h // 6 + 2, w // 6 + 2, 3))
    img = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=np.float64)
    img[:, w // 2 :] = 255 - img[:, w // 2 :]
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(_smooth_image(rng, 37 + i, 41)).save(d / f"{i:04d}.png")
    return d


def _cfg(tmp: Path, data: Path, **kw) -> TrainConfig:
    base = TrainConfig(
        preset="colour",  # the loop's behaviour, not the model's: the smaller, faster-to-render one
        dataset_path=str(data),
        save_path=str(tmp / "models" / "m.pth"),
        samples_dir=str(tmp / "samples"),
        val_split=2,
        val_scales=(2.0,),
        epochs=2,
        batch_size=2,
        lr=2e-3,
        patch_size=8,
        scale_min=2.0,
        scale_max=2.0,
        model={"n_feats": 8, "n_blocks": 1},
        backend="torch",
        lpips=False,
        progress=False,
        device="cpu",
    )
    return replace(base, **kw)


def test_few_steps_reduce_the_loss(tmp_path, image_dir):
    cfg = _cfg(tmp_path, image_dir, epochs=6, repeat=2, val_split=0, scale_min=1.5, scale_max=3.0)
    out = train(cfg)
    losses = [r["train_loss"] for r in out["history"]]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses


def test_outputs_metrics_plot_samples(tmp_path, image_dir, capsys):
    cfg = _cfg(tmp_path, image_dir)
    summary = train(cfg)
    text = capsys.readouterr().out
    assert "--- Training Complete ---" in text and "Best val PSNR" in text
    lines = [json.loads(x) for x in Path(summary["metrics"]).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for key in ("train_loss", "val_loss", "val_psnr", "val_ssim", "bicubic_psnr", "lr", "images_per_s"):
        assert all(np.isfinite(r[key]) for r in lines), key
    assert Path(summary["metrics"]).with_suffix(".png").stat().st_size > 1000
    assert sorted(os.listdir(tmp_path / "samples")) == ["epoch_001.png", "epoch_002.png"]
    strip = Image.open(tmp_path / "samples" / "epoch_001.png")
    assert strip.width > 3 * strip.height  # LR | bicubic | SR | HR side by side
    best = load_checkpoint(cfg.save_path)
    assert "optimizer" not in best  # the model file holds weights + config only
    assert json.loads(best["metrics"])["val_psnr"] == max(r["val_psnr"] for r in lines)
    last = load_checkpoint(last_checkpoint_path(cfg.save_path))
    assert last["epoch"] == 2 and "optimizer" in last and "rng" in last
    assert not [f for f in os.listdir(tmp_path / "models") if f.startswith(".tmp")]


def test_resume_continues_exactly(tmp_path, image_dir, monkeypatch):
    """Killed after epoch 1 and resumed == one uninterrupted run (weights, optimiser, metrics)."""
    full = _cfg(tmp_path / "a", image_dir, epochs=3)
    train(full)
    ref = load_checkpoint(last_checkpoint_path(full.save_path))

    cut = _cfg(tmp_path / "b", image_dir, epochs=3)
    real_save = loop_mod.save_checkpoint
    calls = {"n": 0}

    def save_then_die(path, model, **extra):
        real_save(path, model, **extra)
        if str(path).endswith(".last.pth"):
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt  # killed right after epoch 1's checkpoint

    monkeypatch.setattr(loop_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    monkeypatch.setattr(loop_mod, "save_checkpoint", real_save)
    # Scramble global RNGs: resume must restore them from the checkpoint.
    torch.manual_seed(1234)
    np.random.seed(99)
    train(cut, resume=last_checkpoint_path(cut.save_path))
    got = load_checkpoint(last_checkpoint_path(cut.save_path))
    assert got["epoch"] == ref["epoch"] == 3 and got["step"] == ref["step"]
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k
    assert got["optimizer"]["state"].keys() == ref["optimizer"]["state"].keys()
    for i, st in ref["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg"], got["optimizer"]["state"][i]["exp_avg"])
    h_ref, h_got = json.loads(ref["history"]), json.loads(got["history"])
    assert [r["train_loss"] for r in h_ref] == [r["train_loss"] for r in h_got]
    metrics = [json.loads(x) for x in Path(cut.save_path).with_name("m.metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in metrics] == [1, 2, 3]


def test_resume_refuses_other_architecture(tmp_path, image_dir):
    cfg = _cfg(tmp_path, image_dir, epochs=1)
    train(cfg)
    other = replace(cfg, model={"n_feats": 8, "n_blocks": 2}, epochs=2)
    with pytest.raises(ValueError, match="differs"):
        train(other, resume=last_checkpoint_path(cfg.save_path))
    with pytest.raises(ValueError, match="weights only"):
        train(replace(cfg, epochs=2), resume=cfg.save_path)


def test_time_budget_stops_the_run_with_the_schedule_finished(tmp_path, image_dir, monkeypatch, capsys):
    """--time_budget_min: the cosine decay follows the time spent (the last step runs at
    lr * min_lr_ratio), the run stops once the budget is spent, and a resume says it is complete.
    The clock is faked: 1 s per step, a 4-step (4 / 60 min) budget."""
    fake = {"t": 1000.0}

    def clock() -> float:
        fake["t"] += 0.5  # two reads per step (epoch start / step end)
        return fake["t"]

    monkeypatch.setattr(loop_mod.time, "time", clock)
    cfg = _cfg(tmp_path, image_dir, epochs=50, repeat=1, val_split=0, time_budget_min=4 / 60, min_lr_ratio=0.1)
    out = train(cfg)
    hist = out["history"]
    assert out["steps"] < 50 and hist[-1]["train_seconds"] >= 4.0
    assert hist[-1]["lr"] == pytest.approx(cfg.lr * 0.1)  # the schedule ran to its end in time
    assert hist[0]["lr"] > cfg.lr * 0.5  # and not in steps: the first epoch is still near the top
    capsys.readouterr()
    again = train(replace(cfg, time_budget_min=4 / 60), resume=last_checkpoint_path(cfg.save_path))
    assert again["complete"] and "time budget is spent" in capsys.readouterr().out
    with pytest.raises(ValueError, match="time_budget_min"):
        train(replace(cfg, time_budget_min=-1.0))


def test_amp_bf16_step_on_cpu(tmp_path, image_dir):
    out = train(_cfg(tmp_path, image_dir, epochs=1, amp=True, val_split=0))
    assert np.isfinite(out["final_train_loss"])


@pytest.mark.parametrize("backend", [pytest.param("numba", marks=requires_numba),
                                     pytest.param("triton", marks=requires_triton)])
def test_backend_matches_torch_per_step(tmp_path, image_dir, backend):
    """Same seed, same data: the numba and triton (interpreter) rasterizers give the torch
    backend's per-step losses (one step per epoch here)."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    kw = dict(epochs=3, batch_size=4, val_split=0, patch_size=6, repeat=1)
    a = train(_cfg(tmp_path / "torch", image_dir, backend="torch", **kw))
    b = train(_cfg(tmp_path / backend, image_dir, backend=backend, **kw))
    la = [r["train_loss"] for r in a["history"]]
    lb = [r["train_loss"] for r in b["history"]]
    assert len(la) == 3
    np.testing.assert_allclose(lb, la, rtol=1e-4)  # worst observed 2.9e-7 (triton), 0 (numba)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg: TrainConfig, result_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    summary = train(cfg)
    # Each rank reports its step count so the parent can check the shards were equal.
    torch.save({"steps": summary["steps"]}, os.path.join(result_dir, f"rank{rank}.pt"))


def test_ddp_two_gloo_processes(tmp_path, image_dir):
    cfg = _cfg(tmp_path, image_dir, epochs=2, repeat=2)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # 4 training images x repeat 2 = 8 crops = 4 batches of 2 per epoch, sharded over 2 ranks.
    assert r0["steps"] == r1["steps"] == 4
    last = load_checkpoint(last_checkpoint_path(cfg.save_path))
    assert last["epoch"] == 2 and last["step"] == 4
    assert len(json.loads(last["history"])) == 2
    for v in last["model"].values():
        assert torch.isfinite(v).all()


def test_ddp_ranks_get_disjoint_shards(image_dir):
    from gsplat2d.train.data import CustomImageDataset, RandomScaleBatchSampler

    ds = CustomImageDataset(image_dir, patch_size=8)
    full = list(RandomScaleBatchSampler(ds, 2, seed=3, repeat=2))
    r0 = list(RandomScaleBatchSampler(ds, 2, seed=3, repeat=2, rank=0, world_size=2))
    r1 = list(RandomScaleBatchSampler(ds, 2, seed=3, repeat=2, rank=1, world_size=2))
    assert len(r0) == len(r1) == len(full) // 2
    assert r0 == full[0::2][: len(r0)] and r1 == full[1::2][: len(r1)]


def test_loss_betas_adapt_to_patch_size():
    assert SRLoss.betas_for(10) is None
    assert len(SRLoss.betas_for(48)) == 3 and len(SRLoss.betas_for(176)) == 5
    assert SRLoss.betas_for(20) is None  # under 2 scales: the loss is L1 alone
    for side in (21, 48, 120, 200):
        assert abs(sum(SRLoss.betas_for(side)) - 1) < 1e-9
    loss, parts = SRLoss()(torch.rand(2, 3, 50, 50), torch.rand(2, 3, 50, 50))
    assert torch.isfinite(loss) and set(parts) == {"l1", "ms_ssim"}
    with pytest.raises(ValueError):
        SRLoss(0.0, 0.0)


def test_cli_errors_before_training(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_main(["--dataset_path", str(empty), "--save_path", str(tmp_path / "m.pth")]) == 2
    assert "no images" in capsys.readouterr().err.lower()
    assert train_main(["--dataset_path", str(tmp_path / "missing"), "--save_path", str(tmp_path / "m.pth")]) == 2
    assert "missing" in capsys.readouterr().err
    assert train_main(["--dataset_path", str(empty), "--model", "[1]"]) == 2
    assert "--model" in capsys.readouterr().err
    assert not (tmp_path / "m.pth").exists()


def test_cli_runs_the_briefs_command(tmp_path, image_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = train_main(
        ["--dataset_path", str(image_dir), "--epochs", "1", "--batch_size", "2", "--lr", "1e-4",
         "--save_path", "models/my_model.pth", "--patch_size", "8", "--model", '{"n_feats": 8, "n_blocks": 1}',
         "--val_split", "1", "--val_scales", "2", "--no_lpips", "--no_progress", "--backend", "torch"]
    )
    assert rc == 0
    assert (tmp_path / "models" / "my_model.pth").is_file()
    assert (tmp_path / "models" / "my_model.last.pth").is_file()
    assert (tmp_path / "train_samples" / "epoch_001.png").is_file()


def test_overfitting_warning_and_early_stop(tmp_path, image_dir, monkeypatch, capsys):
    """Validation that only gets worse: warn whenever train loss fell meanwhile, keep the epoch-1
    model as the best, and stop after ``early_stop`` stale epochs."""
    calls = {"n": 0}

    def worse_every_epoch(self, model, loss_fn, device, backend, use_lpips):
        calls["n"] += 1
        self.bicubic_psnr = 20.0
        return {"val_loss": 0.1 * calls["n"], "val_psnr": 30.0 - calls["n"], "val_ssim": 0.5}

    monkeypatch.setattr(loop_mod._Validator, "run", worse_every_epoch)
    cfg = _cfg(tmp_path, image_dir, epochs=6, early_stop=2)
    out = train(cfg)
    hist = out["history"]
    assert out["stopped_early"] and len(hist) == 3  # epoch 1 best, epochs 2 and 3 stale
    for prev, cur in zip(hist, hist[1:]):
        assert cur.get("overfit_warning", False) == (cur["train_loss"] < prev["train_loss"])
    assert ("possible overfitting" in capsys.readouterr().out) == any(r.get("overfit_warning") for r in hist)
    assert load_checkpoint(cfg.save_path)["epoch"] == 1


# --------------------------------------------------------------------------------------------
# DDP on CUDA, guarded on CPU: backend choice, collective timeout, resume on fewer GPUs
# --------------------------------------------------------------------------------------------


def test_dist_backend_follows_the_device_type(monkeypatch):
    from gsplat2d.train.loop import dist_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # "cuda:0" is a CUDA device: comparing the string with "cuda" picked gloo before
    assert dist_backend("cuda:0") == dist_backend("cuda") == dist_backend("auto") == "nccl"
    assert dist_backend("cpu") == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dist_backend("auto") == "gloo"


def test_ddp_timeout_outlasts_a_long_validation(monkeypatch):
    import datetime

    import torch.distributed as dist

    from gsplat2d.train import loop

    seen = {}
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.update(backend=backend, **kw))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: None)
    monkeypatch.setattr(loop, "_train", lambda cfg, resume, overwrite: {"ok": True})
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert loop.train(loop.TrainConfig(dataset_path="x", device="cpu")) == {"ok": True}
    assert seen["backend"] == "gloo"
    assert seen["timeout"] >= datetime.timedelta(minutes=60)  # NCCL's default is 10 minutes


def test_resume_restores_gpu_rng_from_a_run_on_more_gpus():
    from gsplat2d.train.loop import restore_cuda_rng

    states = [torch.tensor([i], dtype=torch.uint8) for i in range(8)]  # saved on 8 GPUs
    calls = []
    assert restore_cuda_rng(states, 2, lambda st, i: calls.append((int(st), i))) == 2
    assert calls == [(0, 0), (1, 1)]
    calls.clear()
    assert restore_cuda_rng(states[:1], 4, lambda st, i: calls.append((int(st), i))) == 1
