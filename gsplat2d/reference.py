"""Dense float64 reference of the gsplat2d rasterizer (every Gaussian at every pixel).

This is the test oracle: obviously-correct, vectorised over Gaussians with plain torch ops, and
differentiable by autograd (it is the gradient reference for the Triton backward). It follows the
README definition literally:

* pixel ``(x, y)`` is sampled at ``p = (x + 0.5, y + 0.5)``; ``d = p - mean``;
  ``sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy``;
* alpha mode: front to back in index order; skip ``sigma < 0``; ``a_i = min(0.99, o exp(-sigma))``;
  skip ``a_i < 1/255``; ``T' = T (1 - a_i)``; if ``T' <= 1e-4`` the pixel stops and neither this
  nor any later Gaussian contributes; else ``color += a_i T c_i``, ``T = T'``;
  ``image = color + T * background``, ``alpha = 1 - T``;
* sum mode: ``w_i = min(1, o exp(-sigma))`` (0 where ``sigma < 0`` or ``w_i < 1/255``);
  ``image = sum w_i c_i``, ``alpha = sum w_i``;
* sum_taper mode: sum mode with ``w_i - (1/255) (1 + ln(255 w_i))`` for every kept ``w_i``;
* degenerate Gaussians (non-PD conic, opacity < 1/255, NaN/Inf mean/conic/opacity) contribute
  nothing;
* a non-finite colour channel reaches exactly the pixels its Gaussian contributes to (that
  channel becomes NaN or Inf there, as float arithmetic makes it) and no other pixel.

``loop_rasterize`` is a tiny pure-Python version of the same definition used to validate the
vectorised reference itself.
"""

from __future__ import annotations

import math

import torch

# The rules written out again on purpose: the oracle does not import the code it checks
# (tests/test_binning.py ties these to gsplat2d.binning).
ALPHA_MAX = 0.99
MIN_WEIGHT = 1.0 / 255.0
T_STOP = 1e-4
#: Sum-mode weights are clamped at this.
SUM_MAX = 1.0
#: Pixel ``(x, y)`` is sampled at ``(x + PIXEL_CENTRE, y + PIXEL_CENTRE)``.
PIXEL_CENTRE = 0.5


def taper(w):
    """The ``"sum_taper"`` weight of kept sum-mode weights ``w >= 1/255`` (float64)."""
    return w - MIN_WEIGHT * (1.0 + torch.log(w / MIN_WEIGHT))


def gaussian_valid(means: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor) -> torch.Tensor:
    """Bool ``[..., N]``: the Gaussian can contribute (finite, PD conic, opacity >= 1/255)."""
    means = means.detach().to(torch.float64)
    conics = conics.detach().to(torch.float64)
    opacities = opacities.detach().to(torch.float64)
    a, b, c = conics.unbind(-1)
    finite = torch.isfinite(means).all(-1) & torch.isfinite(conics).all(-1) & torch.isfinite(opacities)
    det = a * c - b * b
    return finite & (a > 0) & (c > 0) & (det > 0) & (255.0 * opacities >= 1.0)


def _pixel_terms(means, conics, opacities, width, height):
    """Return ``(valid [...,N], sigma [...,N,H,W], raw weight o*exp(-sigma) [...,N,H,W])``.

    Non-contributing Gaussians are replaced by harmless finite values before any arithmetic so
    that their NaN/Inf never leak into values or autograd; ``valid`` masks them out afterwards.
    """
    f64 = torch.float64
    means = means.to(f64)
    conics = conics.to(f64)
    opacities = opacities.to(f64)
    valid = gaussian_valid(means, conics, opacities)
    means = torch.where(valid[..., None], means, torch.zeros_like(means))
    conics = torch.where(valid[..., None], conics, conics.new_tensor([1.0, 0.0, 1.0]).expand_as(conics))
    opacities = torch.where(valid, opacities, torch.ones_like(opacities))

    xs = torch.arange(width, dtype=f64, device=means.device) + PIXEL_CENTRE
    ys = torch.arange(height, dtype=f64, device=means.device) + PIXEL_CENTRE
    dx = xs.view(1, width) - means[..., 0, None, None]  # [..., N, 1, W]
    dy = ys.view(height, 1) - means[..., 1, None, None]  # [..., N, H, 1]
    a = conics[..., 0, None, None]
    b = conics[..., 1, None, None]
    c = conics[..., 2, None, None]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy  # [..., N, H, W]
    raw = opacities[..., None, None] * torch.exp(-sigma)
    return valid, sigma, raw


def _stopped(a, n_dim):
    """Bool, like ``a``: the Gaussians a pixel no longer composites. The stop rule removes a
    suffix: T only falls, so once the inclusive product is <= 1e-4 it stays there (skipped
    Gaussians have a = 0 and keep it)."""
    return torch.cumprod(1.0 - a, dim=n_dim) <= T_STOP


def _splat(weights, colors):
    """``image[..., h, w, c] = sum_n weights[..., n, h, w] colors[..., n, c]`` over the Gaussians
    that contribute to the pixel (weight != 0) only: a non-finite colour reaches exactly the
    pixels its Gaussian contributes to (a plain einsum would spread ``0 * nan`` everywhere)."""
    finite = torch.isfinite(colors)
    image = torch.einsum("...nhw,...nc->...hwc", weights, torch.where(finite, colors, torch.zeros_like(colors)))
    if not bool(finite.all()):
        odd = torch.where(finite, torch.zeros_like(colors), colors)[..., None, None, :]  # [..., N, 1, 1, C]
        term = torch.where((weights != 0)[..., None], weights[..., None] * odd, torch.zeros_like(odd))
        image = image + term.sum(-4)
    return image


def dense_rasterize(means, conics, colors, opacities, width, height, mode="alpha", background=None,
                    return_final_T=False):
    """Float64 dense rasterization. Shapes as the public API; returns ``(image, alpha)``
    (``[..., H, W, C]``, ``[..., H, W, 1]``, float64), plus ``T_final [..., H, W]`` in alpha mode
    when ``return_final_T``.

    The rules are this module's constants and :func:`_stopped`, read at each call, so that a
    test can break one rule at a time (``tests/reference_mutants.py``) and show that the suite
    notices."""
    if mode not in ("alpha", "sum", "sum_taper"):
        raise ValueError(mode)
    f64 = torch.float64
    valid, sigma, raw = _pixel_terms(means, conics, opacities, width, height)
    min_weight = MIN_WEIGHT
    colors = colors.to(f64)
    colors = torch.where(valid[..., None], colors, torch.zeros_like(colors))
    batch = means.shape[:-2]
    n_dim = -3  # the Gaussian axis of [..., N, H, W]

    if mode != "alpha":
        w = raw.clamp(max=SUM_MAX)
        live = valid[..., None, None] & (sigma >= 0) & (w >= min_weight)
        if mode == "sum_taper":  # where(live) below also drops the log of a zero weight
            w = taper(torch.where(live, w, torch.ones_like(w)))
        w = torch.where(live, w, torch.zeros_like(w))
        image = _splat(w, colors)
        alpha = w.sum(n_dim)[..., None]
        return image, alpha

    a = raw.clamp(max=ALPHA_MAX)
    live = valid[..., None, None] & (sigma >= 0) & (a >= min_weight)
    a = torch.where(live, a, torch.zeros_like(a))
    with torch.no_grad():
        stopped = _stopped(a, n_dim)
    a = torch.where(stopped, torch.zeros_like(a), a)
    one_minus = 1.0 - a  # >= 0.01, never 0
    T_incl = torch.cumprod(one_minus, dim=n_dim)
    T_excl = torch.cat([torch.ones_like(T_incl[..., :1, :, :]), T_incl[..., :-1, :, :]], dim=n_dim)
    image = _splat(a * T_excl, colors)
    if T_incl.shape[n_dim] > 0:
        T_final = T_incl[..., -1, :, :]
    else:
        T_final = torch.ones(*batch, height, width, dtype=f64, device=means.device)
    if background is not None:
        image = image + T_final[..., None] * background.to(f64)[..., None, None, :]
    alpha = (1.0 - T_final)[..., None]
    if return_final_T:
        return image, alpha, T_final
    return image, alpha


def ambiguous_pixels(means, conics, opacities, width, height, mode="alpha", weight_tol=1e-5,
                     stop_tol=1e-4, clamp_tol=None):
    """Bool ``[..., H, W]``: pixels where a discrete decision sits at its threshold.

    A float32 renderer can legitimately decide differently from this float64 reference when a
    weight is within float32 rounding of 1/255, or (alpha mode) a transmittance is within rounding
    of the 1e-4 stop. Such a flip changes the pixel by up to ~a_i*T*c_i, so the forward tests
    exclude these pixels from the strict comparison (and assert there are few), and the gradient
    tests give them a zero cotangent. Tolerances are in log space. With ``clamp_tol`` pixels where
    a weight sits at its clamp (0.99 alpha / 1 sum; a kink, not a jump) are flagged too: the
    gradient changes discontinuously there.
    """
    with torch.no_grad():
        valid, sigma, raw = _pixel_terms(means, conics, opacities, width, height)
        op = torch.where(valid, opacities.to(torch.float64), torch.ones_like(opacities, dtype=torch.float64))
        log_w = torch.log(op)[..., None, None] - sigma
        near_w = valid[..., None, None] & ((log_w - math.log(MIN_WEIGHT)).abs() < weight_tol)
        amb = near_w.any(-3)
        if clamp_tol is not None:
            cap = ALPHA_MAX if mode == "alpha" else 1.0
            near_c = valid[..., None, None] & ((log_w - math.log(cap)).abs() < clamp_tol)
            amb = amb | near_c.any(-3)
        if mode == "alpha":
            a = raw.clamp(max=ALPHA_MAX)
            live = valid[..., None, None] & (sigma >= 0) & (a >= MIN_WEIGHT)
            a = torch.where(live, a, torch.zeros_like(a))
            log_T = torch.cumsum(torch.log1p(-a), dim=-3)
            near_T = live & ((log_T - math.log(T_STOP)).abs() < stop_tol)
            amb = amb | near_T.any(-3)
        return amb


def loop_rasterize(means, conics, colors, opacities, width, height, mode="alpha", background=None):
    """Pure-Python loop version of the definition for ONE image (no batch dims). Slow; tiny cases."""
    means = means.tolist()
    conics = conics.tolist()
    colors = colors.tolist()
    opacities = opacities.tolist()
    C = len(colors[0]) if colors else (len(background) if background is not None else 1)
    bg = background.tolist() if background is not None else [0.0] * C
    image = [[[0.0] * C for _ in range(width)] for _ in range(height)]
    alpha = [[[0.0] for _ in range(width)] for _ in range(height)]

    def ok(i):
        (mx, my), (a, b, c), o = means[i], conics[i], opacities[i]
        if not all(math.isfinite(v) for v in (mx, my, a, b, c, o)):
            return False
        return a > 0 and c > 0 and a * c - b * b > 0 and 255.0 * o >= 1.0

    for y in range(height):
        for x in range(width):
            px, py = x + 0.5, y + 0.5
            T = 1.0
            acc = [0.0] * C
            wsum = 0.0
            for i in range(len(means)):
                if not ok(i):
                    continue
                (mx, my), (a, b, c), o = means[i], conics[i], opacities[i]
                dx, dy = px - mx, py - my
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                if sigma < 0:
                    continue
                if mode == "alpha":
                    ai = min(ALPHA_MAX, o * math.exp(-sigma))
                    if ai < MIN_WEIGHT:
                        continue
                    T_next = T * (1.0 - ai)
                    if T_next <= T_STOP:
                        break
                    for k in range(C):
                        acc[k] += ai * T * colors[i][k]
                    T = T_next
                else:
                    w = min(1.0, o * math.exp(-sigma))
                    if w < MIN_WEIGHT:
                        continue
                    if mode == "sum_taper":
                        w -= MIN_WEIGHT * (1.0 + math.log(w / MIN_WEIGHT))
                    for k in range(C):
                        acc[k] += w * colors[i][k]
                    wsum += w
            if mode == "alpha":
                image[y][x] = [acc[k] + T * bg[k] for k in range(C)]
                alpha[y][x] = [1.0 - T]
            else:
                image[y][x] = acc
                alpha[y][x] = [wsum]
    f64 = torch.float64
    return torch.tensor(image, dtype=f64).reshape(height, width, C), torch.tensor(alpha, dtype=f64)


def dense_tile_counts(means, conics, opacities, width, height, tile_size):
    """Int64 ``[..., tiles_y, tiles_x]``: how many Gaussians reach weight >= 1/255 (before the
    0.99 clamp, i.e. o*exp(-sigma) >= 1/255) at some pixel of each tile."""
    with torch.no_grad():
        valid, sigma, raw = _pixel_terms(means, conics, opacities, width, height)
        hit = valid[..., None, None] & (sigma >= 0) & (raw >= MIN_WEIGHT)  # [..., N, H, W]
        ty = (height + tile_size - 1) // tile_size
        tx = (width + tile_size - 1) // tile_size
        pad = torch.zeros(*hit.shape[:-2], ty * tile_size, tx * tile_size, dtype=torch.bool)
        pad[..., :height, :width] = hit
        tiles = pad.reshape(*hit.shape[:-2], ty, tile_size, tx, tile_size).any(-1).any(-2)
        return tiles.sum(-3)
