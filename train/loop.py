"""Training loop for the super-resolution models (:class:`gsplat2d.sr.model.Pixel2GaussianSR`,
:class:`gsplat2d.sr.feature.GaussianFeatureSR`; single process or DDP via torchrun).

One epoch = ``repeat`` passes of random crops over the training images, one random scale per
batch. After each epoch: validation (loss, Y-PSNR, SSIM, optional LPIPS), a sample strip
(LR | bicubic | SR | HR), one JSON line in the metrics file, the curves plot, the resumable
``*.last.pth`` checkpoint and, when val PSNR improved, the best model at ``save_path``. All
checkpoints are written atomically; a run killed mid-epoch resumes from the last finished epoch.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import random
import socket
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from gsplat2d._io import atomic_write
from gsplat2d.cli.common import check_folder_creatable
from gsplat2d.eval.metrics import (
    MS_SSIM_BETAS,
    bicubic_upscale,
    load_image,
    ms_ssim,
    ms_ssim_betas,
    psnr_y,
    ssim_y,
)
from gsplat2d.sr.model import build_model, config_from_checkpoint, load_checkpoint, preset_config, save_checkpoint
from gsplat2d.train.data import CustomImageDataset, make_loader
from gsplat2d.train.plot import plot_curves
from gsplat2d.train.samples import save_sample_strip

__all__ = ["TrainConfig", "SRLoss", "train", "last_checkpoint_path", "checkpoint_train_config"]


@dataclass
class TrainConfig:
    """Everything a run needs (stored in checkpoints so ``--resume`` can check it)."""

    dataset_path: str = ""
    save_path: str = "models/my_model.pth"
    val_path: Optional[str] = None
    val_split: int = 0  # hold out this many training images for validation (when no val_path)
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    min_lr_ratio: float = 0.01  # cosine schedule ends at lr * min_lr_ratio
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0 = off
    patch_size: int = 48  # LR patch side; HR crop side = round(patch_size * scale)
    scale_min: float = 1.0
    scale_max: float = 4.0
    repeat: int = 1  # passes over the training images per epoch
    preset: str = "feature"
    model: Dict[str, Any] = field(default_factory=dict)  # overrides of the preset's config
    l1_weight: float = 0.8
    ms_ssim_weight: float = 0.2
    val_scales: Tuple[float, ...] = (2.0, 3.0, 4.0)
    val_crop: int = 0  # centre-crop validation HR images to this side (0 = full image)
    val_max_images: int = 0  # 0 = all
    lpips: bool = True
    early_stop: int = 0  # stop after this many epochs without val-PSNR improvement (0 = off)
    device: str = "auto"
    backend: str = "auto"
    amp: bool = False
    num_workers: int = 0
    seed: int = 0
    samples_dir: str = "train_samples"
    metrics_path: Optional[str] = None  # default: <save_path stem>.metrics.jsonl
    max_steps: int = 0  # stop after this many optimiser steps in total (0 = no limit; for tests)
    time_budget_min: float = 0.0  # stop after this many minutes of training steps; cosine over time (0 = off)
    progress: bool = True


def last_checkpoint_path(save_path: str) -> str:
    """The resumable checkpoint written beside ``save_path`` (``my_model.last.pth``)."""
    p = Path(save_path)
    return str(p.with_name(p.stem + ".last" + (p.suffix or ".pth")))


def checkpoint_train_config(path: str) -> Optional[Dict[str, Any]]:
    """The training arguments a checkpoint of :func:`train` recorded (``TrainConfig`` fields), or
    None for a checkpoint without them."""
    ck = load_checkpoint(path, map_location="cpu")
    text = ck.get("train_config")
    return json.loads(text) if isinstance(text, str) else None


def _metrics_path(cfg: TrainConfig) -> str:
    if cfg.metrics_path:
        return cfg.metrics_path
    p = Path(cfg.save_path)
    return str(p.with_name(p.stem + ".metrics.jsonl"))


# ---------------------------------------------------------------------- loss
class SRLoss(torch.nn.Module):
    """``l1_weight * L1 + ms_ssim_weight * (1 - MS-SSIM)`` on RGB in [0, 1].

    MS-SSIM is :func:`gsplat2d.eval.metrics.ms_ssim`, the one used by fitting and evaluation
    too: the number of scales adapts to the patch (3 at 48 px, 5 from 176 px) with renormalised
    standard weights, ``normalize='relu'``; patches under 21 px train on L1 alone.
    """

    BETAS = MS_SSIM_BETAS  # the standard 5-scale weights (Wang et al. 2003)

    def __init__(self, l1_weight: float = 0.8, ms_ssim_weight: float = 0.2) -> None:
        super().__init__()
        if l1_weight < 0 or ms_ssim_weight < 0 or l1_weight + ms_ssim_weight <= 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got {l1_weight}, {ms_ssim_weight}")
        self.l1_weight, self.ms_ssim_weight = float(l1_weight), float(ms_ssim_weight)

    @classmethod
    def betas_for(cls, side: int) -> Optional[Tuple[float, ...]]:
        """The scale weights for patches of this side (:func:`gsplat2d.eval.metrics.ms_ssim_betas`)."""
        return ms_ssim_betas(side)

    def forward(self, sr: Tensor, hr: Tensor) -> Tuple[Tensor, Dict[str, float]]:
        sr = sr.float()
        l1 = F.l1_loss(sr, hr)
        loss = self.l1_weight * l1
        parts = {"l1": float(l1.detach())}
        if self.ms_ssim_weight > 0:
            m = ms_ssim(sr, hr)  # None for patches too small for 2 scales: L1 alone
            if m is not None:
                loss = loss + self.ms_ssim_weight * (1.0 - m)
                parts["ms_ssim"] = float(m.detach())
        return loss, parts


# ---------------------------------------------------------------------- helpers
def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return dev


def _rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": json.dumps(np.random.get_state()[1].tolist()),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": json.dumps(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = np.array(json.loads(state["numpy"]), dtype=np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    pstate = tuple(json.loads(state["python"]))
    random.setstate((3, pstate, None))
    if "cuda" in state and torch.cuda.is_available():
        restore_cuda_rng(state["cuda"], torch.cuda.device_count(), torch.cuda.set_rng_state)


def restore_cuda_rng(states: Sequence[Tensor], device_count: int, set_state) -> int:
    """Restore per-GPU generator states saved on a machine with maybe more (or fewer) GPUs:
    device ``i`` gets state ``i`` for ``i < min(len(states), device_count)``; returns how many.
    (``torch.cuda.set_rng_state_all`` fails when the checkpoint holds more states than there
    are devices, e.g. resuming an 8-GPU run on 2.)"""
    n = min(len(states), device_count)
    for i in range(n):
        set_state(states[i], i)
    return n


#: How long non-zero ranks wait in a collective while rank 0 validates and writes checkpoints
#: (NCCL's default of 10 minutes kills a run whose validation takes longer).
DDP_TIMEOUT = datetime.timedelta(minutes=float(os.environ.get("GSPLAT2D_DDP_TIMEOUT_MIN", "120")))


def dist_backend(device: str) -> str:
    """Process-group backend for ``--device``: NCCL for any CUDA device ("cuda", "cuda:0",
    or "auto" with CUDA present), gloo otherwise."""
    if device == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


#: An epoch whose mean training loss (L1 + MS-SSIM terms on [0, 1] images, normally < 0.1) is
#: above this, or whose val PSNR is no better than a flat image's, has diverged: warned about and
#: never kept as the best model.
DIVERGED_LOSS = 1.0


class TrainingDiverged(RuntimeError):
    """A training step cannot go on: a non-finite loss or gradient, or weights gone non-finite."""


def _lr_lambda(cfg: TrainConfig, total_steps: int, clock: Optional[Dict[str, float]] = None):
    """Linear warm-up over steps, then cosine decay to ``min_lr_ratio`` over the steps or, with a
    time budget, over whichever is further along: the fraction ``clock["t"]`` of the budget spent
    or of the epochs' steps (a budget longer than the epochs still decays the rate)."""

    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        if clock is not None and cfg.time_budget_min > 0:
            t = max(t, min(1.0, clock["t"]))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


class _Validator:
    """Fixed validation images (full or centre-cropped HR, PIL-bicubic LR per scale)."""

    def __init__(self, files: Sequence[Path], cfg: TrainConfig) -> None:
        self.items: List[Tuple[str, float, Tensor, Tensor]] = []
        for f in files:
            try:
                hr = load_image(f)
            except Exception as e:  # a bad validation file is skipped like a bad training file
                warnings.warn(f"skipping unreadable validation image {f}: {e}")
                continue
            if cfg.val_crop:
                h, w = hr.shape[-2:]
                c = min(cfg.val_crop, h, w)
                y0, x0 = (h - c) // 2, (w - c) // 2
                hr = hr[:, y0 : y0 + c, x0 : x0 + c]
            for s in cfg.val_scales:
                h, w = hr.shape[-2:]
                lw, lh = int(w // s), int(h // s)
                if lw < 4 or lh < 4:
                    continue
                hw, hh = round(lw * s), round(lh * s)
                hr_s = hr[:, :hh, :hw].contiguous()
                lr = bicubic_upscale(hr_s, (lw, lh))
                lr = (lr * 255).round() / 255  # an 8-bit LR image, as on disk
                self.items.append((f.name, float(s), lr, hr_s))
        if not self.items:
            raise ValueError("no usable validation images (all unreadable or smaller than 4 px at the scales)")
        self.bicubic_psnr: Optional[float] = None
        self.flat_psnr: Optional[float] = None  # a flat image of each LR's mean colour: what any model beats
        self.lpips = None
        self.lpips_note: Optional[str] = None

    def _lpips_metric(self, device: torch.device):
        if self.lpips is None and self.lpips_note is None:
            try:
                from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

                self.lpips = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device)
            except Exception as e:  # no torchvision / no weights offline
                self.lpips_note = f"val_lpips skipped: LPIPS weights could not be loaded ({type(e).__name__}: {e})"
        return self.lpips

    @torch.no_grad()
    def run(self, model: torch.nn.Module, loss_fn: SRLoss, device: torch.device, backend: str, use_lpips: bool):
        model.eval()
        losses, psnrs, ssims, lp = [], [], [], []
        bic, flat = [], []
        for _, s, lr, hr in self.items:
            shave = int(math.ceil(s))
            sr = model(lr[None].to(device), (hr.shape[-1], hr.shape[-2]), backend=backend).float()
            loss, _ = loss_fn(sr, hr[None].to(device))
            losses.append(float(loss))
            sr = sr[0].clamp(0, 1).cpu()
            # The benchmark convention (gsplat2d.eval): HR's Y rounded to 8 bits, SR's not.
            psnrs.append(psnr_y(sr, hr, shave, round_hr_y=True))
            ssims.append(ssim_y(sr, hr, shave, round_hr_y=True))
            if self.bicubic_psnr is None:
                bic.append(psnr_y(bicubic_upscale(lr, (hr.shape[-1], hr.shape[-2])), hr, shave, round_hr_y=True))
                flat.append(psnr_y(lr.mean((1, 2), keepdim=True).expand_as(hr), hr, shave, round_hr_y=True))
            if use_lpips and self._lpips_metric(device) is not None:
                lp.append(float(self.lpips(sr[None].to(device), hr[None].to(device))))
        if self.bicubic_psnr is None:
            self.bicubic_psnr, self.flat_psnr = float(np.mean(bic)), float(np.mean(flat))
        model.train()
        out = {
            "val_loss": float(np.mean(losses)),
            "val_psnr": float(np.mean(psnrs)),
            "val_ssim": float(np.mean(ssims)),
        }
        if lp:
            out["val_lpips"] = float(np.mean(lp))
        return out


# ---------------------------------------------------------------------- main loop
def _dist_info() -> Tuple[int, int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _log(msg: str, rank: int) -> None:
    if rank == 0:
        print(msg, flush=True)


def train(cfg: TrainConfig, resume: Optional[str] = None, overwrite: bool = False) -> Dict[str, Any]:
    """Run training; returns a summary dict (best val PSNR, epochs run, paths, time).

    A run's files (``save_path``, its ``*.last.pth``, the metrics) are never replaced by another
    run: where they exist, a run that does not ``resume`` from that run's checkpoint is refused
    (``ValueError``) unless ``overwrite``; and a lock file beside ``save_path`` refuses a second
    process while one is writing there.

    Under torchrun (``WORLD_SIZE > 1``) the process group is initialised here (NCCL on CUDA,
    gloo on CPU) and the model is wrapped in DDP; rank 0 validates and writes files.
    """
    started_dist = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (dist.is_available() and dist.is_initialized()):
        dist.init_process_group(dist_backend(cfg.device), timeout=DDP_TIMEOUT)
        started_dist = True
    try:
        return _train(cfg, resume, overwrite)
    finally:
        if started_dist:
            dist.destroy_process_group()


def check_output_paths(cfg: TrainConfig) -> None:
    """Every file the run will write, checked before any work (a folder where a file goes, a
    file where a folder goes, a folder that cannot be created or written): ``ValueError``."""
    files = {"--save_path": cfg.save_path, "the resumable checkpoint": last_checkpoint_path(cfg.save_path),
             "--metrics_path": _metrics_path(cfg),
             "the metrics plot": str(Path(_metrics_path(cfg)).with_suffix(".png"))}
    for what, path in files.items():
        if Path(path).is_dir():
            raise ValueError(f"{what} {path} is a folder; give a file name such as {Path(path) / 'model.pth'}")
        check_folder_creatable(Path(path).parent, f"the folder of {what}")
    if cfg.samples_dir:
        if Path(cfg.samples_dir).exists() and not Path(cfg.samples_dir).is_dir():
            raise ValueError(f"--samples_dir {cfg.samples_dir} is a file; give a folder")
        check_folder_creatable(Path(cfg.samples_dir), "--samples_dir")


def check_no_other_run(cfg: TrainConfig, resume: Optional[str], overwrite: bool) -> None:
    """Refuse (``ValueError``) to start a run over another run's files: ``save_path``, its
    ``*.last.pth`` or the metrics file exists and this run neither resumes from that
    ``*.last.pth`` nor was told to ``overwrite``."""
    last = last_checkpoint_path(cfg.save_path)
    present = [p for p in (cfg.save_path, last, _metrics_path(cfg)) if Path(p).is_file()]
    if not present or overwrite:
        return
    if resume and Path(resume).resolve() == Path(last).resolve():
        return
    cont = f"continue it with --resume {last}" if Path(last).is_file() else "choose another --save_path"
    raise ValueError(f"{present[0]} already holds a training run; {cont}, or pass --overwrite to replace it")


@contextlib.contextmanager
def run_lock(save_path: str) -> Iterator[None]:
    """Hold ``<save_path>.lock`` (pid and host inside) for the run: a second process on the same
    path is refused with a ``ValueError`` naming the first; a lock left by a process that is gone
    (kill -9) is taken over."""
    lock = Path(save_path).with_name(Path(save_path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()} {socket.gethostname()}"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None:
                raise ValueError(f"another training run ({owner}) is writing {save_path}; wait for it to "
                                 f"finish or use another --save_path (remove {lock} if that run is gone)") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        break
    try:
        yield
    finally:
        try:
            if lock.read_text().strip() == me:
                lock.unlink()
        except OSError:
            pass


def _lock_owner(lock: Path) -> Optional[str]:
    """``"pid N on HOST"`` of a live lock holder, None where the lock is stale (its process on
    this host is gone, or the file is unreadable/empty)."""
    try:
        pid_s, host = lock.read_text().split()
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return f"pid {pid} on {host}"


def _train(cfg: TrainConfig, resume: Optional[str], overwrite: bool = False) -> Dict[str, Any]:
    run = _Run(cfg)
    complete = bool(resume) and run.restore(resume)
    check_no_other_run(cfg, resume, overwrite)
    with run_lock(cfg.save_path) if run.rank == 0 else contextlib.nullcontext():
        if resume and run.rank == 0:  # drop metrics lines of an epoch that was cut before its checkpoint
            _write_jsonl(run.metrics_path, run.history)
        if complete:
            return run.complete_summary(resume)
        run.log_start()
        for epoch in range(run.start_epoch, cfg.epochs):
            if run.budget_spent():
                break
            record = run.train_epoch(epoch)
            run.end_epoch(epoch, record)
            if cfg.early_stop and run.stale >= cfg.early_stop:
                _log(f"early stopping: no val PSNR improvement for {run.stale} epochs", run.rank)
                run.stopped_early = True
                break
        return run.finish()


class _Run:
    """One training run's state and its steps: setup (checks, data, model, optimiser), resume,
    one epoch of steps, the end-of-epoch work (validation, files, checkpoints), the summary."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.rank, self.world, local_rank = _dist_info()
        self.device = _pick_device(cfg.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        self.mcfg = self._check(cfg)
        self._build_data(cfg)
        total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            total_steps = min(total_steps, cfg.max_steps)

        _seed_all(cfg.seed)
        self.model = build_model(self.mcfg).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.clock = {"t": 0.0, "seconds": 0.0}  # training-step seconds so far (the time budget's clock)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg, total_steps, self.clock))
        self.loss_fn = SRLoss(cfg.l1_weight, cfg.ms_ssim_weight)
        self.start_epoch, self.step, self.best_psnr, self.stale = 0, 0, -math.inf, 0
        self.history: List[Dict[str, Any]] = []
        self.stopped_early = False
        self.budget_s = cfg.time_budget_min * 60.0
        self.metrics_path = _metrics_path(cfg)

    @staticmethod
    def _check(cfg: TrainConfig):
        """Settings, model config and output paths, before any data is read."""
        if cfg.epochs < 1 or cfg.batch_size < 1 or not (cfg.lr > 0):
            raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {cfg.epochs}, {cfg.batch_size}, {cfg.lr}")
        if not (cfg.time_budget_min >= 0) or not math.isfinite(cfg.time_budget_min):
            raise ValueError(f"--time_budget_min must be >= 0 minutes, got {cfg.time_budget_min}")
        mcfg = preset_config(cfg.preset, cfg.model)  # a bad preset or override fails before any data is read
        check_output_paths(cfg)
        return mcfg

    def _build_data(self, cfg: TrainConfig) -> None:
        """Training set, held-out or separate validation set, loader; a missing or empty folder is
        an error before any model is built."""
        dataset = CustomImageDataset(
            cfg.dataset_path, patch_size=cfg.patch_size, scale_range=(cfg.scale_min, cfg.scale_max)
        )
        val_files: List[Path] = []
        if cfg.val_path:
            from gsplat2d.train.data import _list_images

            val_files = _list_images(Path(cfg.val_path))
        elif cfg.val_split:
            if cfg.val_split >= len(dataset.files):
                raise ValueError(f"--val_split {cfg.val_split} leaves no training images (dataset has {len(dataset.files)})")
            # Every k-th image (deterministic, spread over sub-folders) is held out.
            step = len(dataset.files) / cfg.val_split
            held = {int(i * step) for i in range(cfg.val_split)}
            val_files = [f for i, f in enumerate(dataset.files) if i in held]
            dataset.files = [f for i, f in enumerate(dataset.files) if i not in held]
        if cfg.val_path:  # a validation image is never a training image too
            held = {f.resolve() for f in val_files}
            kept = [f for f in dataset.files if f.resolve() not in held]
            if len(kept) < len(dataset.files):
                _log(f"{len(dataset.files) - len(kept)} image(s) of --val_path are also under --dataset_path: "
                     f"left out of training", self.rank)
                if not kept:
                    raise ValueError(f"every training image is a validation image (--val_path {cfg.val_path})")
                dataset.files = kept
        if cfg.val_max_images:
            val_files = val_files[: cfg.val_max_images]
        self.dataset, self.val_files = dataset, val_files
        self.validator = _Validator(val_files, cfg) if (val_files and self.rank == 0) else None
        self.loader = make_loader(
            dataset, cfg.batch_size, num_workers=cfg.num_workers, seed=cfg.seed,
            drop_last=len(dataset) >= cfg.batch_size, repeat=cfg.repeat, rank=self.rank, world_size=self.world,
        )
        self.steps_per_epoch = len(self.loader.batch_sampler)
        if self.steps_per_epoch < 1:
            raise ValueError(f"no batches: {len(dataset)} images x repeat {cfg.repeat} for {self.world} process(es)")

    def restore(self, resume: str) -> bool:
        """Load a ``*.last.pth`` checkpoint of the same architecture (reads only; the metrics file
        is rewritten from it once the run holds its lock); True when that run is complete."""
        cfg = self.cfg
        ck = load_checkpoint(resume, map_location="cpu")
        if "optimizer" not in ck:
            raise ValueError(f"{resume} holds weights only (no optimiser state); resume from a *.last.pth file")
        try:
            ck_cfg = config_from_checkpoint(ck)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{resume}: bad model config: {e}") from None
        if ck_cfg != self.mcfg:
            raise ValueError(f"{resume}: its model config {asdict(ck_cfg)} differs from this run's {asdict(self.mcfg)}")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.start_epoch, self.step = int(ck["epoch"]), int(ck["step"])
        self.best_psnr = float(ck.get("best_psnr", -math.inf))
        self.stale = int(ck.get("stale", 0))
        self.history = json.loads(ck.get("history", "[]"))
        self.clock["seconds"] = float(ck.get("train_seconds", 0.0))
        _set_rng_state(ck["rng"])
        _log(f"resumed from {resume}: epoch {self.start_epoch}, step {self.step}", self.rank)
        return self.start_epoch >= cfg.epochs or bool(self.budget_s and self.clock["seconds"] >= self.budget_s)

    def complete_summary(self, resume: str) -> Dict[str, Any]:
        cfg = self.cfg
        if self.start_epoch >= cfg.epochs:
            _log(f"the run in {resume} is complete ({self.start_epoch} of {cfg.epochs} epochs); to train "
                 f"further, resume it with a larger --epochs", self.rank)
        else:
            _log(f"the run in {resume} is complete (its {cfg.time_budget_min:g}-minute time budget is spent); "
                 f"to train further, resume it with a larger --time_budget_min", self.rank)
        return {"epochs_run": self.start_epoch, "steps": self.step, "complete": True,
                "best_val_psnr": self.best_psnr if math.isfinite(self.best_psnr) else None,
                "history": self.history, "save_path": cfg.save_path,
                "last_checkpoint": last_checkpoint_path(cfg.save_path)}

    def log_start(self) -> None:
        """Wrap the model for DDP, pick the AMP dtype, print the run's one-line description."""
        cfg = self.cfg
        self.t_start = time.time()
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.amp_dtype = torch.bfloat16 if cfg.amp else None
        if cfg.amp and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            self.amp_dtype = torch.float16  # pre-Ampere GPUs: fp16 autocast, with the gradient scaler below
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        _log(
            f"gsplat2d train: {len(self.dataset.files)} training images, {len(self.val_files)} validation images, "
            f"{self.steps_per_epoch} steps/epoch x {cfg.epochs} epochs, preset {cfg.preset} "
            f"({self.model.num_parameters()} parameters), device {self.device}, world size {self.world}"
            + (f", AMP {self.amp_dtype}" if self.amp_dtype else ""),
            self.rank,
        )

    def budget_spent(self) -> bool:
        cfg = self.cfg
        return bool((cfg.max_steps and self.step >= cfg.max_steps) or (self.budget_s and self.clock["seconds"] >= self.budget_s))

    def _tick(self, t_step: float) -> float:
        """Advance the time budget's clock by one step (data loading included, validation not)."""
        now = time.time()
        self.clock["seconds"] += now - t_step
        if self.budget_s and self.world > 1:  # one clock for every rank, so all stop at the same step
            t = torch.tensor([self.clock["seconds"]], dtype=torch.float64, device=self.device)
            dist.broadcast(t, 0)
            self.clock["seconds"] = float(t)
        if self.budget_s:
            self.clock["t"] = self.clock["seconds"] / self.budget_s
        return now

    def train_epoch(self, epoch: int) -> Dict[str, Any]:
        """One epoch of optimiser steps; returns its metrics record."""
        cfg, device = self.cfg, self.device
        self.loader.batch_sampler.set_epoch(epoch)
        self.net.train()
        sums, count, t0, n_img = {}, 0, time.time(), 0
        bar = None
        if cfg.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(self.loader, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       dynamic_ncols=True)
        t_step = time.time()
        for batch in bar if bar is not None else self.loader:
            lr_img = batch["lr"].to(device, non_blocking=True)
            hr = batch["hr"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
                sr = self.net(lr_img, (hr.shape[-1], hr.shape[-2]), backend=cfg.backend)
            loss, parts = self.loss_fn(sr.float(), hr)
            if not torch.isfinite(loss):
                self._diverged_at(epoch, f"the training loss is {float(loss)}")
            if not loss.requires_grad:  # non-finite weights: every Gaussian is dropped, the loss is constant
                self._diverged_at(epoch, "the model's output no longer depends on its weights")
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip:
                self.scaler.unscale_(self.opt)
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                if not self.scaler.is_enabled() and not torch.isfinite(norm):  # fp16's scaler skips such steps
                    self._diverged_at(epoch, f"the gradient norm is {float(norm)}")
            self.scaler.step(self.opt)
            self.scaler.update()
            t_step = self._tick(t_step)
            self.sched.step()
            self.step += 1
            count += 1
            n_img += hr.shape[0]
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if bar is not None:
                bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", img_s=f"{n_img / (time.time() - t0):.1f}")
            if self.budget_spent():
                break
        if bar is not None:
            bar.close()
        record: Dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": self.sched.get_last_lr()[0],
            "train_loss": sums.get("loss", float("nan")) / max(count, 1),
            "train_l1": sums.get("l1", float("nan")) / max(count, 1),
            "epoch_time_s": time.time() - t0,
            "images_per_s": n_img * self.world / max(time.time() - t0, 1e-9),
            "train_seconds": self.clock["seconds"],
        }
        if self.world > 1:
            t = torch.tensor([record["train_loss"]], device=device)
            dist.all_reduce(t)
            record["train_loss"] = float(t) / self.world
        return record

    def _validate(self, epoch: int, record: Dict[str, Any]) -> bool:
        """Rank 0: validation metrics into ``record``, the overfitting warning, the sample strip;
        True when val PSNR improved (or there is no validation)."""
        v = self.validator
        if v is None:
            return not self._diverged(record)  # no validation: the latest model is the best we know
        cfg = self.cfg
        record.update(v.run(self.model, self.loss_fn, self.device, cfg.backend, cfg.lpips))
        record["bicubic_psnr"] = v.bicubic_psnr
        if v.lpips_note and epoch == self.start_epoch:
            _log(v.lpips_note, self.rank)
        improved = not self._diverged(record) and record["val_psnr"] > self.best_psnr
        if improved:
            self.best_psnr, self.stale = record["val_psnr"], 0
        else:
            self.stale += 1
        if self.history and "val_loss" in self.history[-1]:
            prev = self.history[-1]
            # 1% margin: epoch-to-epoch noise in val_loss is not a trend.
            if record["val_loss"] > 1.01 * prev["val_loss"] and record["train_loss"] < prev["train_loss"]:
                record["overfit_warning"] = True
                _log(f"warning: val_loss rose ({prev['val_loss']:.4f} -> {record['val_loss']:.4f}) while "
                     f"train_loss fell: possible overfitting", self.rank)
        _, _, lr_v, hr_v = v.items[0]
        save_sample_strip(self.model, lr_v, hr_v, Path(cfg.samples_dir) / f"epoch_{epoch + 1:03d}.png", self.device,
                          cfg.backend)
        return improved

    def _diverged_at(self, epoch: int, what: str) -> None:
        kept = (f"the best model so far is {self.cfg.save_path}" if os.path.isfile(self.cfg.save_path)
                else "no model saved")
        raise TrainingDiverged(f"{what} at epoch {epoch + 1}, step {self.step}: the run diverged (lower --lr); {kept}")

    def _diverged(self, record: Dict[str, Any]) -> bool:
        """Whether an epoch's model is broken (never kept as the best; warned about): a mean
        training loss above :data:`DIVERGED_LOSS`, or a val PSNR no better than a flat image of
        each LR image's mean colour (which any working model beats)."""
        why = ""
        if not record["train_loss"] <= DIVERGED_LOSS:
            why = f"train_loss {record['train_loss']:.4g} > {DIVERGED_LOSS:g}"
        elif "val_psnr" in record and self.validator.flat_psnr is not None and not (
                record["val_psnr"] > self.validator.flat_psnr):
            why = (f"val_psnr {record['val_psnr']:.2f} dB is below a flat image of the mean colour's "
                   f"{self.validator.flat_psnr:.2f} dB")
        if why:
            record["diverged"] = True
            _log(f"warning: {why}: the run is diverging (lower --lr); this epoch's model is not kept as the best",
                 self.rank)
        return bool(why)

    def end_epoch(self, epoch: int, record: Dict[str, Any]) -> None:
        """Validation, metrics file and plot, best and resumable checkpoints, the epoch's line (rank
        0); the early-stopping counter shared with every rank."""
        cfg = self.cfg
        if self.rank == 0:
            improved = self._validate(epoch, record)
            self.history.append(record)
            _write_jsonl(self.metrics_path, self.history)  # whole file, atomically: a kill never tears a line
            plot_curves(self.history, str(Path(self.metrics_path).with_suffix(".png")))
            extra = {"train_config": json.dumps(asdict(cfg)), "epoch": epoch + 1, "step": self.step,
                     "best_psnr": self.best_psnr, "stale": self.stale, "history": json.dumps(self.history),
                     "train_seconds": self.clock["seconds"]}
            if improved:
                save_checkpoint(cfg.save_path, self.model, metrics=json.dumps(record),
                                **{k: extra[k] for k in ("train_config", "epoch", "step")})
            save_checkpoint(
                last_checkpoint_path(cfg.save_path), self.model, optimizer=self.opt.state_dict(),
                scheduler=self.sched.state_dict(), rng=_rng_state(), **extra,
            )
            _log(self._epoch_line(epoch, record, improved), self.rank)
        if self.world > 1:
            flag = torch.tensor([self.stale], device=self.device)
            dist.broadcast(flag, 0)
            self.stale = int(flag)

    def stop_reason(self) -> str:
        """Why the run ended, for the summary."""
        cfg, done = self.cfg, (self.history[-1]["epoch"] if self.history else self.start_epoch)
        if self.stopped_early:
            return f"early stopping (no val PSNR improvement for {self.stale} epochs)"
        if cfg.max_steps and self.step >= cfg.max_steps:
            return f"--max_steps {cfg.max_steps} reached"
        if self.budget_s and self.clock["seconds"] >= self.budget_s:
            return f"the {cfg.time_budget_min:g}-minute time budget was spent (epoch {done} of {cfg.epochs})"
        return f"all {cfg.epochs} epochs done"

    def _epoch_line(self, epoch: int, record: Dict[str, Any], improved: bool) -> str:
        line = f"epoch {epoch + 1}/{self.cfg.epochs}  train_loss {record['train_loss']:.4f}"
        if "val_psnr" in record:
            line += (
                f"  val_loss {record['val_loss']:.4f}  val_psnr {record['val_psnr']:.3f} dB "
                f"(bicubic {record['bicubic_psnr']:.3f})  val_ssim {record['val_ssim']:.4f}"
            )
            if "val_lpips" in record:
                line += f"  val_lpips {record['val_lpips']:.4f}"
        return line + f"  {record['images_per_s']:.1f} img/s" + ("  *best*" if improved and self.validator else "")

    def finish(self) -> Dict[str, Any]:
        """The run's summary dict; rank 0 prints the ``--- Training Complete ---`` block."""
        cfg, history = self.cfg, self.history
        summary = {
            "epochs_run": (history[-1]["epoch"] if history else self.start_epoch),
            "steps": self.step,
            "best_val_psnr": self.best_psnr if math.isfinite(self.best_psnr) else None,
            "bicubic_val_psnr": self.validator.bicubic_psnr if self.validator else None,
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "time_s": time.time() - self.t_start,
            "save_path": cfg.save_path,
            "last_checkpoint": last_checkpoint_path(cfg.save_path),
            "metrics": self.metrics_path,
            "stopped_early": self.stopped_early,
            "stopped_by": self.stop_reason(),
            "model_saved": os.path.isfile(cfg.save_path),
            "history": history,
        }
        if self.rank == 0:
            print("--- Training Complete ---")
            print(f"Epochs:          {summary['epochs_run']} ({self.step} steps, {summary['time_s'] / 60:.1f} min)")
            print(f"Stopped:         {summary['stopped_by']}")
            if summary["final_train_loss"] is not None:
                print(f"Final train loss: {summary['final_train_loss']:.4f}")
            if summary["best_val_psnr"] is not None:
                bic = summary["bicubic_val_psnr"]
                print(f"Best val PSNR:   {summary['best_val_psnr']:.3f} dB"
                      + (f" (bicubic {bic:.3f} dB)" if bic is not None else ""))
            if not summary["model_saved"]:
                print("Model:           none saved: every epoch diverged (lower --lr)")
            else:
                print(f"Model:           {cfg.save_path}")
            print(f"Resume from:     {summary['last_checkpoint']}")
            print(f"Metrics:         {self.metrics_path} (+ plot {Path(self.metrics_path).with_suffix('.png')})")
            print("-------------------------")
        return summary


def _write_jsonl(path: str, records: List[Dict[str, Any]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()), suffix=".jsonl")


