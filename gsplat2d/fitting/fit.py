"""Fit one image with N 2D Gaussians (GaussianImage-style image representation and compression).

Python API::

    from gsplat2d.fitting.fit import fit, fit_image, evaluate
    field = fit("kodim23.png", num_gaussians=20000, steps=5000)          # -> Gaussians2D
    res = fit_image(img, num_gaussians=2000, steps=1000, mode="sum")     # -> FitResult
    res.gaussians.save("img.g2d", codec="quantized", meta=res.meta)
    metrics = evaluate(res.gaussians, img, res.meta)                      # PSNR, MS-SSIM, bpp, FPS

Command line (``gsplat2d fit``, also ``python -m gsplat2d.fitting.fit``)::

    gsplat2d fit IMAGE --num-gaussians 20000 --steps 5000 --out image.g2d
    gsplat2d fit FOLDER --num-gaussians 10000 --steps 5000 --out fitted/     # + results.json/.md

Method (details and measurements in ``docs/fitting.md``): the Gaussians are optimised in pixel
units against the target with an MSE loss and Adam (cosine learning-rate decay), every step
rendering the whole image through :func:`gsplat2d.rasterize` (``backend="auto"``: the Triton
kernels on CUDA, the tiled torch backend on CPU). Covariance presets: ``"cholesky"``
(``L = [[l11, 0], [s l22, l22]]``, ``Sigma = L L^T``, with ``log l11``, ``s``, ``log l22`` the
parameters) and ``"scale_rotation"`` (``log sx``, ``log sy``, angle). ``"sum"`` mode (GaussianImage's
accumulated summation, opacity fixed at 1 by default) or ``"alpha"`` mode (front-to-back
compositing, opacity learned by default). Initialisation ``"gradient"`` (default) samples the
positions from the image-gradient magnitude mixed with a uniform share, sets each Gaussian's size
from the local sampling density and its colour from the image under it (normalised by the
summed weights in sum mode); ``"uniform"`` does the same with uniform positions; ``"random"`` is
the GaussianImage-style baseline (uniform positions, random colours).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from gsplat2d._io import atomic_write
from gsplat2d.cli.common import (
    EXIT_USER_ERROR,
    UserError,
    add_alias,
    add_runtime_args,
    apply_runtime_args,
    check_folder_creatable,
    check_output_file,
    parse_size,
    run_command,
)
from gsplat2d.image_files import IMAGE_EXTENSIONS, list_images
from gsplat2d import g2d as _codec
from gsplat2d.g2d import QuantSpec
from gsplat2d.conics import (
    conics_from_cholesky,
    conics_from_scale_rotation,
    covariances_from_cholesky,
    covariances_from_scale_rotation,
)
from gsplat2d.gaussians import Gaussians2D
from gsplat2d.rasterize import rasterize

__all__ = [
    "FitConfig",
    "FitResult",
    "fit",
    "fit_image",
    "evaluate",
    "psnr",
    "ms_ssim",
    "init_gaussians",
    "main",
]

PARAMS = ("cholesky", "scale_rotation")
MODES = ("sum", "alpha")
INITS = ("gradient", "uniform", "random")
SCHEDULES = ("cosine", "step", "constant")
IMAGE_EXTS = IMAGE_EXTENSIONS  # one list for every command (gsplat2d.image_files)


@dataclass
class FitConfig:
    """Options of :func:`fit_image` (the CLI flags have the same names with dashes).

    num_gaussians: N.
    steps: optimisation steps (each renders the full image once, forward and backward).
    param: covariance preset, ``"cholesky"`` or ``"scale_rotation"``.
    mode: ``"sum"`` or ``"alpha"`` rasterizer mode.
    learn_opacity: optimise per-Gaussian opacities (sigmoid of a logit); default (None): yes in
        alpha mode, no in sum mode (opacity 1, as GaussianImage).
    init: ``"gradient"`` (detail-weighted positions), ``"uniform"`` or ``"random"``.
    uniform_share: share of the gradient init's sampling density that is uniform (so flat
        regions still get Gaussians).
    size_factor: initial standard deviation in units of the local Gaussian spacing.
    lr: Adam learning rate of colours, covariance parameters and opacity logits.
    lr_means: Adam learning rate of positions, in units of the mean Gaussian spacing
        ``sqrt(W H / N)`` pixels (so it does not depend on image size or N).
    schedule: ``"cosine"`` decay to ``lr * final_lr_factor``, ``"step"`` (x0.5 at 50% and 75%
        of the steps) or ``"constant"``.
    qat_steps: extra quantisation-aware finetune steps after ``steps``: positions and covariances
        are replaced by their quantised values (as the codec ``quant`` stores them) and frozen,
        and the colours (and opacities) are refitted against that geometry with a fresh Adam at
        ``lr * qat_lr_factor``; the returned field has the quantised geometry, so saving it with
        the same ``quant`` stores exactly the geometry the colours were fitted to.
    quant: bit depths of the compact codec (used by QAT); default (None):
        ``QuantSpec.for_size(W, H)`` (1/16-pixel position steps, 7-bit covariances and colours).
    seed: seeds the initialisation.
    backend, tile_size: passed to :func:`gsplat2d.rasterize`.
    log_every: record the training PSNR every this many steps (``FitResult.history``).
    progress: show a tqdm bar with the current PSNR.
    """

    num_gaussians: int = 20000
    steps: int = 5000
    param: str = "cholesky"
    mode: str = "sum"
    learn_opacity: Optional[bool] = None
    init: str = "gradient"
    uniform_share: float = 0.3
    size_factor: float = 0.7
    lr: float = 0.08
    lr_means: float = 0.2
    schedule: str = "cosine"
    final_lr_factor: float = 0.05
    qat_steps: int = 0
    qat_lr_factor: float = 0.05
    quant: Optional[QuantSpec] = None
    seed: int = 0
    backend: str = "auto"
    tile_size: Optional[int] = None  # None: gsplat2d.rasterize picks (16, or 8 for small GPU launches)
    log_every: int = 10
    progress: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.num_gaussians, bool) or not isinstance(self.num_gaussians, int) or self.num_gaussians < 1:
            raise ValueError(f"num_gaussians must be a positive int, got {self.num_gaussians!r}")
        for name in ("steps", "qat_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        for name, v, allowed in (("param", self.param, PARAMS), ("mode", self.mode, MODES),
                                 ("init", self.init, INITS), ("schedule", self.schedule, SCHEDULES)):
            if v not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {v!r}")
        if not 0.0 <= self.uniform_share <= 1.0:
            raise ValueError(f"uniform_share must be in [0, 1], got {self.uniform_share}")
        for name in ("size_factor", "lr", "lr_means", "final_lr_factor", "qat_lr_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.quant is not None and not isinstance(self.quant, QuantSpec):
            raise TypeError(f"quant must be a QuantSpec or None, got {type(self.quant).__name__}")

    @property
    def opacity_learned(self) -> bool:
        return self.mode == "alpha" if self.learn_opacity is None else bool(self.learn_opacity)


@dataclass
class FitResult:
    """What :func:`fit_image` returns.

    gaussians: the fitted field (normalised coordinates, float32, detached, on the fitting device).
    meta: ``{"mode", "width", "height"}`` (+ ``"param"``, ``"init"``): pass to ``save(meta=...)``.
    psnr: final training PSNR (dB, RGB, render clamped to [0, 1]).
    fit_time_s: wall time of the optimisation (initialisation included, evaluation excluded).
    history: ``[(step, psnr), ...]`` every ``log_every`` steps (QAT steps continue the count).
    init_psnr: PSNR of the initial field.
    """

    gaussians: Gaussians2D
    meta: Dict[str, Any]
    psnr: float
    fit_time_s: float
    init_psnr: float
    history: List[Tuple[int, float]]
    config: FitConfig


# ---------------------------------------------------------------------------------- metrics
def psnr(pred: Tensor, target: Tensor) -> float:
    """RGB PSNR in dB (data range 1) of ``pred`` clamped to [0, 1] against ``target``
    (any equal shapes; float, no 8-bit rounding: the GaussianImage convention)."""
    mse = F.mse_loss(pred.detach().float().clamp(0, 1), target.detach().float()).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ms_ssim(pred: Tensor, target: Tensor) -> float:
    """MS-SSIM of ``[3, H, W]`` images, ``pred`` clamped to [0, 1]:
    :func:`gsplat2d.eval.metrics.ms_ssim` (the one MS-SSIM of the package: 5 scales from 176 px,
    fewer below, renormalised weights); ``nan`` for images too small for 2 scales."""
    from gsplat2d.eval.metrics import ms_ssim as _ms_ssim

    val = _ms_ssim(pred.detach()[None].cpu(), target.detach()[None].cpu())
    return float("nan") if val is None else float(val)


# ---------------------------------------------------------------------------------- parameters
class _Params(torch.nn.Module):
    """Trainable Gaussians in pixel units for a ``W x H`` target."""

    def __init__(self, means_px: Tensor, std_px: Tensor, colors: Tensor, opacity: Optional[Tensor],
                 param: str, width: int, height: int, spacing: float, mode: str) -> None:
        super().__init__()
        self.param, self.width, self.height, self.spacing = param, width, height, float(spacing)
        self.mode = mode
        self.xy = torch.nn.Parameter(means_px / self.spacing)
        ls = torch.log(std_px)
        zeros = torch.zeros_like(ls)
        # cholesky: (log l11, shear l21/l22, log l22); scale_rotation: (log sx, log sy, angle)
        comps = [ls, zeros, ls] if param == "cholesky" else [ls, ls, zeros]
        self.cov = torch.nn.Parameter(torch.stack(comps, dim=-1))
        self.color = torch.nn.Parameter(colors)
        self.opacity_logit = torch.nn.Parameter(opacity) if opacity is not None else None

    def means_px(self) -> Tensor:
        return self.xy * self.spacing

    def opacities(self) -> Tensor:
        if self.opacity_logit is None:
            return torch.ones(self.xy.shape[0], dtype=self.xy.dtype, device=self.xy.device)
        return torch.sigmoid(self.opacity_logit)

    def _chol(self) -> Tensor:
        a, s, c = self.cov.unbind(-1)
        l11, l22 = torch.exp(a), torch.exp(c)
        return torch.stack([l11, s * l22, l22], dim=-1)

    def conics_px(self) -> Tensor:
        if self.param == "cholesky":
            return conics_from_cholesky(self._chol())
        return conics_from_scale_rotation(torch.exp(self.cov[:, :2]), self.cov[:, 2])

    def covariances_px(self) -> Tensor:
        if self.param == "cholesky":
            return covariances_from_cholesky(self._chol())
        return covariances_from_scale_rotation(torch.exp(self.cov[:, :2]), self.cov[:, 2])

    def field(self) -> Gaussians2D:
        """Differentiable normalised-coordinate field."""
        w, h = float(self.width), float(self.height)
        scale = torch.tensor([w, h], dtype=self.xy.dtype, device=self.xy.device)
        cscale = torch.tensor([w * w, w * h, h * h], dtype=self.xy.dtype, device=self.xy.device)
        return Gaussians2D(self.means_px() / scale, self.covariances_px() / cscale, self.color, self.opacities(),
                           mode=self.mode, source_size=(int(self.width), int(self.height)))


def _blur(x: Tensor, radius: int) -> Tensor:
    """Separable box blur of ``[H, W]`` with replicate padding (``2 radius + 1`` taps)."""
    if radius <= 0:
        return x
    k = 2 * radius + 1
    y = x[None, None]
    ker = torch.full((1, 1, 1, k), 1.0 / k, dtype=x.dtype, device=x.device)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), ker)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), ker.transpose(-1, -2))
    return y[0, 0]


def gradient_magnitude(image: Tensor) -> Tensor:
    """Sobel gradient magnitude ``[H, W]`` of ``[C, H, W]`` (L2 over channels)."""
    img = image[None].float()
    c = img.shape[1]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=img.device) / 8.0
    ker = torch.stack([kx, kx.t()])[:, None].repeat(c, 1, 1, 1)  # [2C, 1, 3, 3]
    pad = F.pad(img, (1, 1, 1, 1), mode="replicate")
    g = F.conv2d(pad.repeat_interleave(2, dim=1), ker, groups=2 * c)
    return g[0].square().sum(0).sqrt()


def init_gaussians(
    image: Tensor, num_gaussians: int, *, init: str = "gradient", mode: str = "sum",
    uniform_share: float = 0.3, size_factor: float = 0.7, seed: int = 0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Initial ``means_px [N, 2]``, isotropic ``std_px [N]`` and raw ``colors [N, C]`` (before the
    sum-mode normalisation of :func:`fit_image`) for ``image [C, H, W]``."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    C, H, W = image.shape
    dev = image.device
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    n = int(num_gaussians)
    spacing = math.sqrt(H * W / n)
    if init == "gradient":
        g = gradient_magnitude(image.cpu())
        g = _blur(g, 1)
        p = g / g.sum() if float(g.sum()) > 0 else torch.full_like(g, 1.0 / g.numel())
        p = (1.0 - uniform_share) * p + uniform_share / p.numel()
        idx = torch.multinomial(p.reshape(-1).double(), n, replacement=True, generator=gen)
        jitter = torch.rand(n, 2, generator=gen, dtype=torch.float64)
        means = torch.stack([(idx % W).double(), torch.div(idx, W, rounding_mode="floor").double()], -1) + jitter
        # local density (Gaussians per pixel) from the sampling distribution, averaged over about
        # one mean spacing, gives the local spacing and so the size
        dens = _blur(p.double(), max(1, int(round(spacing)))) * n
        rho = dens.reshape(-1)[idx]
        std = size_factor / torch.sqrt(rho)
    else:
        means = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([W, H], dtype=torch.float64)
        std = torch.full((n,), size_factor * spacing, dtype=torch.float64)
    std = std.clamp(0.5, 0.5 * max(H, W))
    if init == "random":
        colors = torch.rand(n, C, generator=gen, dtype=torch.float64)
    else:
        px = means[:, 0].long().clamp(0, W - 1)
        py = means[:, 1].long().clamp(0, H - 1)
        colors = image.detach().cpu().double()[:, py, px].t()
    return means.float().to(dev), std.float().to(dev), colors.float().to(dev)


# ---------------------------------------------------------------------------------- fitting
def _lr_factor(step: int, total: int, schedule: str, final: float) -> float:
    if schedule == "constant" or total <= 1:
        return 1.0
    t = step / (total - 1)
    if schedule == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0 if t < 0.5 else (0.5 if t < 0.75 else 0.25)


def _as_image(image: Union[Tensor, str, "os.PathLike[str]"]) -> Tensor:
    if isinstance(image, Tensor):
        img = image
        if img.dim() != 3 or img.shape[0] < 1:
            raise ValueError(f"image must be a [C, H, W] tensor, got {tuple(img.shape)}")
        if not img.is_floating_point():
            img = img.float() / 255.0
        return img.float()
    from gsplat2d.eval.metrics import load_image

    return load_image(image)


#: Smallest image side that fitting accepts (MS-SSIM's 11 x 11 window needs at least this).
MIN_SIDE = 11


def _snapshot(params: torch.nn.Module) -> Dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in params.state_dict().items()}


def _restore_if_better(params: torch.nn.Module, current: float, best: float, state: Dict[str, Tensor]) -> None:
    if best > current:
        params.load_state_dict(state)


#: Quantised geometry of the QAT phase: pixel means, pixel conics and the quantised field.
_QuantGeometry = Tuple[Tensor, Tensor, Gaussians2D]


def _check_target_size(W: int, H: int, num_gaussians: int) -> None:
    """Reject images too small for MS-SSIM and more Gaussians than pixels."""
    if min(H, W) < MIN_SIDE:
        raise ValueError(f"the image is {W}x{H}; fitting needs at least {MIN_SIDE}x{MIN_SIDE} pixels")
    if num_gaussians > H * W:
        raise ValueError(f"{num_gaussians} Gaussians for a {W}x{H} image ({H * W} pixels): use at most "
                         f"one Gaussian per pixel")


def _initial_params(target: Tensor, cfg: FitConfig) -> _Params:
    """Trainable Gaussians initialised from ``target [C, H, W]`` as ``cfg`` says."""
    _, H, W = target.shape
    means, std, colors = init_gaussians(
        target, cfg.num_gaussians, init=cfg.init, mode=cfg.mode, uniform_share=cfg.uniform_share,
        size_factor=cfg.size_factor, seed=cfg.seed,
    )
    opacity = None
    if cfg.opacity_learned:
        opacity = torch.full((cfg.num_gaussians,), math.log(0.9 / 0.1) if cfg.mode == "alpha" else 6.0,
                             device=target.device)
    spacing = math.sqrt(H * W / cfg.num_gaussians)
    return _Params(means, std, colors, opacity, cfg.param, W, H, spacing, cfg.mode).to(target.device)


def _normalise_sum_colors(params: _Params, cfg: FitConfig) -> None:
    """Divide the colours so that the summed weights reproduce the image under each Gaussian's
    centre (the raw init colours, summed over overlapping Gaussians, would overshoot)."""
    W, H = params.width, params.height
    with torch.no_grad():
        ones = torch.ones_like(params.color)
        _, wsum = rasterize(params.means_px(), params.conics_px(), ones, params.opacities(), W, H,
                            mode="sum", tile_size=cfg.tile_size, backend=cfg.backend)
        px = params.means_px()[:, 0].long().clamp(0, W - 1)
        py = params.means_px()[:, 1].long().clamp(0, H - 1)
        params.color.div_(wsum[py, px, 0].clamp_min(0.5)[:, None])


def _render(p: _Params, qgeom: Optional[_QuantGeometry], cfg: FitConfig) -> Tensor:
    """``[H, W, C]`` render of ``p``; with ``qgeom`` (QAT phase) its frozen quantised geometry."""
    if qgeom is None:
        m, q = p.means_px(), p.conics_px()
    else:
        m, q = qgeom[0], qgeom[1]
    img, _ = rasterize(m, q, p.color, p.opacities(), p.width, p.height, mode=cfg.mode,
                       tile_size=cfg.tile_size, backend=cfg.backend)
    return img


def _training_psnr(mse: float) -> float:
    """PSNR of the training loss (the render unclamped, unlike :func:`psnr`)."""
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def _float_phase_optimizer(params: _Params, cfg: FitConfig) -> torch.optim.Adam:
    """Adam over every parameter; ``base`` is each group's learning rate before the schedule."""
    groups = [
        {"params": [params.xy], "lr": cfg.lr_means, "base": cfg.lr_means},
        {"params": [params.cov], "lr": cfg.lr, "base": cfg.lr},
        {"params": [params.color], "lr": cfg.lr, "base": cfg.lr},
    ]
    if params.opacity_logit is not None:
        groups.append({"params": [params.opacity_logit], "lr": cfg.lr, "base": cfg.lr})
    return torch.optim.Adam(groups, eps=1e-15)


def _start_qat(params: _Params, spec: QuantSpec, cfg: FitConfig) -> Tuple[_QuantGeometry, torch.optim.Adam]:
    """Quantisation-aware finetune: geometry frozen at its quantised values, colours (and
    opacities) refitted to compensate, with a fresh optimiser."""
    with torch.no_grad():
        fq = _codec.quantize_dequantize(params.field().detach().to(torch.float32), spec)
        qm, qc = fq.to_pixels(params.width, params.height)
    appearance = [params.color] + ([params.opacity_logit] if params.opacity_logit is not None else [])
    base = cfg.lr * cfg.qat_lr_factor
    return (qm, qc, fq), torch.optim.Adam([{"params": appearance, "lr": base, "base": base}], eps=1e-15)


def _optimise(
    params: _Params, target_hwc: Tensor, spec: QuantSpec, init_psnr: float, cfg: FitConfig,
) -> Tuple[List[Tuple[int, float]], Optional[_QuantGeometry]]:
    """The float phase, then the QAT phase; returns the PSNR history and the QAT geometry
    (None without QAT)."""
    qgeom: Optional[_QuantGeometry] = None
    opt = _float_phase_optimizer(params, cfg)
    history: List[Tuple[int, float]] = []
    total = cfg.steps + cfg.qat_steps
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="fit", unit="step", dynamic_ncols=True, leave=False)
    cur = init_psnr
    # never return a field worse than one seen: the best parameters of the float phase (by the
    # training PSNR, which is measured before each update) are restored before QAT / at the end
    best_psnr, best_state = init_psnr, _snapshot(params)
    try:
        for step in range(total):
            qat = step >= cfg.steps
            if step == cfg.steps:
                _restore_if_better(params, cur, best_psnr, best_state)
                qgeom, opt = _start_qat(params, spec, cfg)
            fac = _lr_factor(step, cfg.steps, cfg.schedule, cfg.final_lr_factor) if not qat else 1.0
            for g in opt.param_groups:
                g["lr"] = g["base"] * fac
            loss = F.mse_loss(_render(params, qgeom, cfg), target_hwc)
            cur = _training_psnr(float(loss.detach()))
            if not qat and cur > best_psnr:
                best_psnr, best_state = cur, _snapshot(params)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                history.append((step + 1, cur))
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step + 1 == total:
                    bar.set_postfix_str(f"PSNR {cur:.2f} dB" + (" (QAT)" if qat else ""))
        if cfg.qat_steps == 0:
            with torch.no_grad():  # same measure as the training PSNR (unclamped)
                mse = float(F.mse_loss(_render(params, qgeom, cfg), target_hwc))
            _restore_if_better(params, _training_psnr(mse), best_psnr, best_state)
    finally:
        if bar is not None:
            bar.close()
    return history, qgeom


def _final_field(params: _Params, qgeom: Optional[_QuantGeometry]) -> Gaussians2D:
    """The detached float32 field; after QAT with exactly the quantised geometry the colours
    were refitted to (not the float geometry it was quantised from)."""
    field = params.field().detach()
    if qgeom is not None:
        field = field._like(qgeom[2].means, qgeom[2].covariances, field.colors, field.opacities)
    return field._like(*(t.float().contiguous() for t in (field.means, field.covariances, field.colors,
                                                         field.opacities)))


def fit_image(
    image: Union[Tensor, str, "os.PathLike[str]"],
    config: Optional[FitConfig] = None,
    *,
    device: Union[str, torch.device, None] = None,
    **overrides: Any,
) -> FitResult:
    """Fit ``image`` (``[C, H, W]`` float in [0, 1], or an image file) with 2D Gaussians.

    Args:
        image: the target.
        config: a :class:`FitConfig`; keyword ``overrides`` replace its fields (or build one:
            ``fit_image(img, num_gaussians=2000, steps=500)``).
        device: where to fit (default: the image tensor's device, CPU for files).

    Returns:
        A :class:`FitResult` (``.gaussians`` is the :class:`Gaussians2D`).
    """
    cfg = config if config is not None else FitConfig()
    if overrides:
        cfg = FitConfig(**{**asdict(cfg), "quant": cfg.quant, **overrides})
    target = _as_image(image)
    if device is not None:
        target = target.to(device)
    C, H, W = target.shape
    _check_target_size(W, H, cfg.num_gaussians)
    spec = cfg.quant or QuantSpec.for_size(W, H)
    t0 = time.perf_counter()
    params = _initial_params(target, cfg)
    target_hwc = target.permute(1, 2, 0).contiguous()
    if cfg.mode == "sum" and cfg.init != "random":
        _normalise_sum_colors(params, cfg)
    with torch.no_grad():
        init_psnr = psnr(_render(params, None, cfg), target_hwc)
    history, qgeom = _optimise(params, target_hwc, spec, init_psnr, cfg)
    with torch.no_grad():
        final = _render(params, qgeom, cfg)
        field = _final_field(params, qgeom)
    if target.device.type == "cuda":
        torch.cuda.synchronize()
    fit_time = time.perf_counter() - t0
    meta = {"mode": cfg.mode, "width": int(W), "height": int(H), "param": cfg.param, "init": cfg.init}
    return FitResult(field, meta, psnr(final, target_hwc), fit_time, init_psnr, history, cfg)


def fit(image: Union[Tensor, str, "os.PathLike[str]"], **kwargs: Any) -> Gaussians2D:
    """Fit ``image`` and return the :class:`Gaussians2D` (see :func:`fit_image` / :class:`FitConfig`)."""
    return fit_image(image, **kwargs).gaussians


def _time_render(field: Gaussians2D, W: int, H: int, mode: str, background, backend: str,
                 repeats: int) -> float:
    """Median wall time (ms) of rendering ``field`` at ``W x H`` without autograd."""
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            if field.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            field.render(W, H, mode=mode, background=background, backend=backend)
            if field.device.type == "cuda":
                torch.cuda.synchronize()
            if i > 0:  # the first call warms up (Triton JIT on a GPU)
                times.append(time.perf_counter() - t)
    times.sort()
    return 1000.0 * times[len(times) // 2]


def evaluate(
    field: Gaussians2D,
    image: Union[Tensor, str, "os.PathLike[str]"],
    meta: Dict[str, Any],
    *,
    quant: Optional[QuantSpec] = None,
    backend: str = "auto",
    repeats: int = 5,
) -> Dict[str, Any]:
    """Metrics of a fitted field against its target.

    Returns a dict: ``psnr``, ``ms_ssim`` (lossless field), ``psnr_q``, ``ms_ssim_q`` (the field
    as the quantised codec stores it; ``quant`` default ``QuantSpec.for_size(W, H)``), ``bytes_lossless``, ``bytes_quantized`` (exact file
    sizes), ``bpp_lossless``, ``bpp_quantized`` (bits per pixel of the target), ``parse_ms``
    (reading the quantised file's bytes into a field), ``render_ms`` (median render at native
    size, no autograd) and ``fps`` (``1000 / render_ms``).
    """
    target = _as_image(image).to(field.device)
    C, H, W = target.shape
    mode = meta.get("mode", "sum")
    bg = meta.get("background")
    bg_t = None if bg is None else torch.tensor(bg, dtype=torch.float32, device=field.device)
    quant = quant or QuantSpec.for_size(W, H)
    data_l = _codec.encode(field, meta=meta)
    data_q = _codec.encode(field, quant=quant, meta=meta)
    t = time.perf_counter()
    fq, _, _ = Gaussians2D.from_g2d_bytes(data_q)
    parse_ms = 1000.0 * (time.perf_counter() - t)
    fq = fq.to(field.device)
    out: Dict[str, Any] = {}
    with torch.inference_mode():
        img, _ = field.render(W, H, mode=mode, background=bg_t, backend=backend)
        imgq, _ = fq.render(W, H, mode=mode, background=bg_t, backend=backend)
    tgt = target.permute(1, 2, 0)
    out["psnr"] = psnr(img, tgt)
    out["ms_ssim"] = ms_ssim(img.permute(2, 0, 1), target)
    out["psnr_q"] = psnr(imgq, tgt)
    out["ms_ssim_q"] = ms_ssim(imgq.permute(2, 0, 1), target)
    out["bytes_lossless"] = len(data_l)
    out["bytes_quantized"] = len(data_q)
    out["bpp_lossless"] = 8.0 * len(data_l) / (W * H)
    out["bpp_quantized"] = 8.0 * len(data_q) / (W * H)
    out["parse_ms"] = parse_ms
    out["render_ms"] = _time_render(fq, W, H, mode, bg_t, backend, repeats)
    out["fps"] = 1000.0 / out["render_ms"] if out["render_ms"] > 0 else float("inf")
    return out


# ---------------------------------------------------------------------------------- tables
_COLUMNS = [
    ("image", "image", "{}"),
    ("num_gaussians", "N", "{}"),
    ("steps", "steps", "{}"),
    ("init", "init", "{}"),
    ("init_psnr", "init PSNR", "{:.2f}"),
    ("psnr", "PSNR", "{:.2f}"),
    ("ms_ssim", "MS-SSIM", "{:.4f}"),
    ("psnr_q", "PSNR (q)", "{:.2f}"),
    ("ms_ssim_q", "MS-SSIM (q)", "{:.4f}"),
    ("bpp_quantized", "bpp (q)", "{:.3f}"),
    ("bpp_lossless", "bpp (f32)", "{:.3f}"),
    ("fit_time_s", "fit s", "{:.1f}"),
    ("render_ms", "decode ms", "{:.1f}"),
    ("fps", "FPS", "{:.1f}"),
]
_MEAN_KEYS = ["init_psnr", "psnr", "ms_ssim", "psnr_q", "ms_ssim_q", "bpp_quantized", "bpp_lossless",
              "fit_time_s", "render_ms", "fps"]


def mean_row(rows: Sequence[Dict[str, Any]], label: str = "mean") -> Dict[str, Any]:
    out: Dict[str, Any] = {"image": label}
    for k in _MEAN_KEYS:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        if vals:
            out[k] = sum(vals) / len(vals)
    for k in ("num_gaussians", "steps", "init"):
        vs = {r.get(k) for r in rows}
        if len(vs) == 1:
            out[k] = vs.pop()
    return out


def markdown_table(rows: Sequence[Dict[str, Any]]) -> str:
    cols = [c for c in _COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = []
        for k, _, fmt in cols:
            v = r.get(k)
            cells.append("" if v is None else (fmt.format(v) if not isinstance(v, str) else v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment() -> Dict[str, Any]:
    import platform

    env = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        env["device"] = f"CPU: {cpu} ({os.cpu_count()} cores visible)"
    return env


def write_tables(rows: Sequence[Dict[str, Any]], out_json: Path, out_md: Path, extra: Dict[str, Any],
                 title: str) -> None:
    rows = list(rows)
    mean = mean_row(rows)
    payload = {**extra, "environment": environment(), "images": rows, "mean": mean}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")
    md = [f"# {title}", "", f"Environment: {payload['environment']}", "",
          markdown_table(rows + [mean]), ""]
    out_md.write_text("\n".join(md))


# ---------------------------------------------------------------------------------- CLI
def center_crop(img: Tensor, width: int, height: int) -> Tensor:
    C, H, W = img.shape
    w, h = min(width, W), min(height, H)
    x0, y0 = (W - w) // 2, (H - h) // 2
    return img[:, y0: y0 + h, x0: x0 + w].contiguous()


def _parse_size(s: str) -> Tuple[int, int]:
    try:
        return parse_size(s, "--crop")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gsplat2d fit",
        description="Fit an image (or every image of a folder) with N 2D Gaussians and save the field "
        "as a .g2d file; reports PSNR, MS-SSIM, file size / bpp, fit time and decode speed.",
        epilog="Re-render a fitted field at any size: gsplat2d render --gaussians image.g2d --scale 2.5 "
        "--output_path big.png",
    )
    p.add_argument("input", nargs="?", help="an image file, or a folder of images (same as --input_path)")
    p.add_argument("--input_path", help="an image file, or a folder of images (fits each; writes results.json/.md)")
    p.add_argument("--output_path", help="output .g2d (single image; default IMAGE.g2d next to the image) or "
                   "folder (folder input; default INPUT_fit/)")
    p.add_argument("--num_gaussians", type=int, default=20000, help="at most one per pixel")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--param", choices=PARAMS, default="cholesky", help="covariance preset")
    p.add_argument("--mode", choices=MODES, default="sum", help="rasterizer mode (default: sum, as GaussianImage)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--opacity", dest="learn_opacity", action="store_const", const=True,
                   help="learn per-Gaussian opacity (default: only in alpha mode)")
    g.add_argument("--no_opacity", dest="learn_opacity", action="store_const", const=False)
    p.add_argument("--init", choices=INITS, default="gradient")
    p.add_argument("--lr", type=float, default=FitConfig.lr)
    p.add_argument("--lr_means", type=float, default=FitConfig.lr_means)
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--codec", choices=("quantized", "lossless"), default="quantized",
                   help="file encoding (default: quantized; lossless = float32)")
    p.add_argument("--pos_bits", type=int, default=None,
                   help="bits per position coordinate (default: a 1/16-pixel step at the image size)")
    p.add_argument("--cov_bits", type=int, default=QuantSpec.cov_bits)
    p.add_argument("--color_bits", type=int, default=QuantSpec.color_bits)
    p.add_argument("--opacity_bits", type=int, default=QuantSpec.opacity_bits)
    p.add_argument("--cov_encoding", choices=("cholesky", "scale_rotation"), default=QuantSpec.cov_encoding)
    p.add_argument("--qat_steps", type=int, default=0,
                   help="quantisation-aware finetune steps after --steps (renders the quantised field)")
    p.add_argument("--crop", type=_parse_size, metavar="WxH", help="fit the centre crop of this size")
    p.add_argument("--json", dest="json_path", help="also write the metrics as JSON here (single image)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_runtime_args(p)
    # the dashed spellings of earlier versions, accepted and not shown
    for flag in ("--num_gaussians", "--no_opacity", "--lr_means", "--pos_bits", "--cov_bits", "--color_bits",
                 "--opacity_bits", "--cov_encoding", "--qat_steps", "--no_progress"):
        add_alias(p, flag, flag.replace("_", "-"))
    add_alias(p, "--output_path", "--out")
    return p


def _list_images(folder: Path) -> List[Path]:
    return list_images(folder)


def _fit_one(path: Path, args, cfg: FitConfig, spec_kw: Dict[str, Any], device: str, out: Path) -> Dict[str, Any]:
    from gsplat2d.eval.metrics import load_image

    img = load_image(path)
    if args.crop:
        img = center_crop(img, *args.crop)
    img = img.to(device)
    if cfg.quant is None:  # QAT at this image's position bits
        cfg = FitConfig(**{**asdict(cfg), "quant": QuantSpec.for_size(img.shape[-1], img.shape[-2], **spec_kw)})
    res = fit_image(img, cfg)
    spec = QuantSpec.for_size(res.meta["width"], res.meta["height"], **spec_kw)
    metrics = evaluate(res.gaussians, img, res.meta, quant=spec, backend=cfg.backend)
    size = res.gaussians.save(out, codec=args.codec, quant=spec if args.codec == "quantized" else None,
                              meta=res.meta)
    key = "bytes_quantized" if args.codec == "quantized" else "bytes_lossless"
    assert size == metrics[key], (size, metrics[key])
    row = {"image": path.name, "width": res.meta["width"], "height": res.meta["height"],
           "num_gaussians": cfg.num_gaussians, "steps": cfg.steps, "qat_steps": cfg.qat_steps,
           "init": cfg.init, "param": cfg.param, "mode": cfg.mode, "init_psnr": res.init_psnr,
           "train_psnr": res.psnr, "fit_time_s": res.fit_time_s, **metrics, "file": str(out), "file_bytes": size,
           "quant": asdict(spec)}
    return row


def _f4(v: float) -> str:
    return f"{v:.4f}" if math.isfinite(v) else "n/a"


def _print_row(row: Dict[str, Any]) -> None:
    print(
        f"{row['image']}: {row['width']}x{row['height']}, N={row['num_gaussians']}, steps={row['steps']}"
        f"{' + ' + str(row['qat_steps']) + ' QAT' if row['qat_steps'] else ''}, init={row['init']} "
        f"(init PSNR {row['init_psnr']:.2f} dB)\n"
        f"  PSNR {row['psnr']:.2f} dB  MS-SSIM {_f4(row['ms_ssim'])}   (float32 field, {row['bytes_lossless']} B, "
        f"{row['bpp_lossless']:.3f} bpp)\n"
        f"  PSNR {row['psnr_q']:.2f} dB  MS-SSIM {_f4(row['ms_ssim_q'])}   (quantised, {row['bytes_quantized']} B, "
        f"{row['bpp_quantized']:.3f} bpp)\n"
        f"  fit {row['fit_time_s']:.1f} s; decode: parse {row['parse_ms']:.1f} ms + render {row['render_ms']:.1f} ms "
        f"({row['fps']:.1f} FPS)\n"
        f"  wrote {row['file']} ({row['file_bytes']} bytes)"
    )


def _run(args: argparse.Namespace) -> int:
    if args.input and args.input_path and args.input != args.input_path:
        raise UserError("give the image either as INPUT or as --input_path, not both")
    src = args.input_path or args.input
    if not src:
        raise UserError("no input: give an image or a folder (--input_path)")
    inp = Path(src)
    if not inp.exists():
        raise UserError(f"{inp} does not exist")
    device = apply_runtime_args(args)
    try:
        spec_kw = dict(cov_bits=args.cov_bits, color_bits=args.color_bits, opacity_bits=args.opacity_bits,
                       cov_encoding=args.cov_encoding)
        if args.pos_bits is not None:
            spec_kw["pos_bits"] = args.pos_bits
        QuantSpec(**spec_kw)  # validate now
        cfg = FitConfig(
            num_gaussians=args.num_gaussians, steps=args.steps, param=args.param, mode=args.mode,
            learn_opacity=args.learn_opacity, init=args.init, lr=args.lr, lr_means=args.lr_means,
            schedule=args.schedule, qat_steps=args.qat_steps, seed=args.seed,
            backend=args.backend, progress=not (args.no_progress or args.quiet),
        )
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    say = (lambda *a, **k: None) if args.quiet else print
    if inp.is_dir():
        return _fit_folder(inp, args, cfg, spec_kw, device, say)
    out = Path(args.output_path) if args.output_path else inp.with_suffix(".g2d")
    if out.is_dir():
        out = out / (inp.stem + ".g2d")
    if out.suffix.lower() != ".g2d":
        raise UserError(f"--output_path {out}: a fitted field is written as a .g2d file")
    if args.json_path and Path(args.json_path).suffix.lower() != ".json":
        raise UserError(f"--json {args.json_path}: give a .json file name")
    check_output_file(out, "--output_path")  # before the fit, not after it
    if args.json_path:
        check_output_file(args.json_path, "--json")
    try:
        row = _fit_one(inp, args, cfg, spec_kw, str(device), out)
    except ValueError as e:  # unreadable or too small image, more Gaussians than pixels
        raise UserError(str(e)) from None
    if not args.quiet:
        _print_row(row)
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json_path, lambda f: f.write((json.dumps(row, indent=2) + "\n").encode()),
                     suffix=".json")
    return 0


def _fit_folder(inp: Path, args, cfg: "FitConfig", spec_kw: Dict[str, Any], device, say) -> int:
    """Every image of ``inp``: a file that cannot be fitted is skipped with one warning naming it;
    the results tables cover the fitted ones; "N of M failed" and exit 2 when any failed."""
    images = _list_images(inp)
    if not images:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {inp}")
    out_dir = Path(args.output_path) if args.output_path else inp.parent / (inp.name + "_fit")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--output_path {out_dir} is a file; give a folder for a folder input")
    check_folder_creatable(out_dir, "--output_path")
    rows, failed = [], []
    for i, path in enumerate(images):
        say(f"[{i + 1}/{len(images)}] {path.name}", flush=True)
        try:
            row = _fit_one(path, args, cfg, spec_kw, str(device), out_dir / (path.stem + ".g2d"))
        except ValueError as e:
            print(f"gsplat2d fit: warning: skipped {path}: {e}", file=sys.stderr)
            failed.append(path)
            continue
        if not args.quiet:
            _print_row(row)
        rows.append(row)
    if rows:
        extra = {"config": {**asdict(cfg), "quant": spec_kw}, "codec": args.codec,
                 "failed": [str(p) for p in failed]}
        write_tables(rows, out_dir / "results.json", out_dir / "results.md", extra, f"gsplat2d fit: {inp}")
        say(f"\nwrote {out_dir / 'results.json'} and {out_dir / 'results.md'}\n")
        say(markdown_table(rows + [mean_row(rows)]))
    if failed:
        print(f"gsplat2d fit: {len(failed)} of {len(images)} images failed", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``gsplat2d fit``; returns the exit status (2: bad arguments or inputs)."""
    return run_command("gsplat2d fit", build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
