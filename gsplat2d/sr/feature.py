"""Feature-space splatting super-resolution (the GaussianSR idea, Hu et al. 2024, arXiv 2407.18046).

Instead of a colour per Gaussian, every LR pixel carries K Gaussians holding a ``C``-dimensional
feature vector; the features are splatted onto the HR pixel grid with :func:`gsplat2d.rasterize`
(sum mode; by default ``"sum_taper"``, whose weights end smoothly) and each HR pixel's splatted
feature is decoded to RGB by a small per-pixel MLP.

Per Gaussian, from a 3x3 convolution head on the same EDSR-style backbone as
:class:`gsplat2d.sr.model.Pixel2GaussianSR` (LR-pixel units):

====================  =========================================================================
``dx, dy``            offset from the LR pixel centre, ``max_offset * tanh(raw)``
shape                 ``shape="bank"``: softmax over ``bank_size`` logits mixes the covariances
                      of a learnable kernel bank (soft selection; ``select="hard"`` takes the
                      argmax kernel at inference), times an adaptive variance factor
                      ``exp(2 scale_span tanh(raw / scale_span))``. ``shape="direct"``:
                      ``(log sx, log sy, theta)`` as in the colour model
``r, g, b``           the LR pixel's colour + raw (a residual), splatted as a colour base
``feature``           ``feature_dim`` raw numbers
``logit opacity``     ``sigmoid(raw + logit(o0))``, the Gaussian's relative weight
====================  =========================================================================

Rendering splats ``[rgb, feature, 1]`` (``3 + C + 1`` channels) in one pass; the last channel is
the total splatted weight ``W``, and ``rgb / W`` and ``feature / W`` are weighted means, so a
sparse or border region does not darken. The decoder (1x1 convolutions) reads
``[feature / W, rgb / W, cell]`` where ``cell = (w / W_out, h / H_out)`` is the HR pixel's size in
LR pixels (as in LIIF), and adds its RGB output to ``rgb / W``. An untrained model (zero last
decoder layer, near-zero head) renders the Gaussian interpolation of the LR image.

A field from :meth:`GaussianFeatureSR.encode` is an ordinary :class:`gsplat2d.Gaussians2D` with
``3 + C + 1`` channels; :meth:`GaussianFeatureSR.render` (or :meth:`pixel_decoder` applied to a
window rasterized from it) turns it into an image, so encoding once and rendering many sizes,
windows included, works exactly as for the colour model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from gsplat2d.conics import covariances_from_scale_rotation
from gsplat2d.gaussians import Gaussians2D
from gsplat2d.sr._layers import (
    ConfigChecks,
    ResBlock,
    SuperResolver,
    grid_means,
    lr_covariances,
    normalise_covariances,
    pad_border,
    partition_opacity,
    per_gaussian,
    pixel_colors,
)

__all__ = ["FeatureSRConfig", "GaussianFeatureSR"]

#: The floor of the splatted weight a pixel's sums are divided by (a pixel no Gaussian reaches
#: decodes from zeros). Not the rasterizer's 1/255 weight cutoff (``gsplat2d.binning.MIN_WEIGHT``).
SPLAT_WEIGHT_FLOOR = 1e-4
#: Outside autograd the decoder runs on blocks of this many pixels: bounded memory, and hidden
#: activations that stay in cache (1024 x 1024 pixels on 2 cores: 65 ms at 2^15 against 164 ms
#: at 2^17 and 225 ms in one pass).
DECODE_PIXELS = 2**15


@dataclass
class FeatureSRConfig(ConfigChecks):
    """Architecture of :class:`GaussianFeatureSR` (stored in every checkpoint)."""

    n_feats: int = 32  # backbone width (channels)
    n_blocks: int = 4  # EDSR residual blocks
    res_scale: float = 1.0
    k: int = 1  # Gaussians per LR pixel
    feature_dim: int = 12  # C: feature channels per Gaussian (splatted with 3 colour + 1 weight channel)
    shape: str = "bank"  # "bank" (classifier over a learnable kernel bank) or "direct"
    bank_size: int = 8  # kernels in the bank
    select: str = "soft"  # bank selection at inference: "soft" (as in training) or "hard" (argmax)
    max_offset: float = 1.0  # |dx|, |dy| bound in LR pixels
    init_scale: float = 0.6  # initial standard deviation in LR pixels
    scale_span: float = 1.0  # log-std may move +-scale_span (direct) / the bank's variance factor
    decoder_hidden: int = 48  # width of the decoder's hidden 1x1 convolutions
    decoder_layers: int = 2  # hidden layers of the decoder
    cell: bool = True  # feed the decoder the HR pixel's size in LR pixels
    colors: int = 3  # image channels
    border: int = 2  # replicate-pad the LR image by this many pixels
    # features are splatted in a sum mode: "sum_taper" (weights reach 0 smoothly at the cutoff: no
    # rings at large scales, docs/theory.md 1.9) or "sum" (models trained before it existed)
    mode: str = "sum_taper"

    def validate(self) -> "FeatureSRConfig":
        self._ints(("n_feats", "k", "feature_dim", "bank_size", "decoder_hidden", "colors"),
                   ("n_blocks", "decoder_layers", "border"))
        self._choice("shape", ("bank", "direct"))
        self._choice("select", ("soft", "hard"))
        self._choice("mode", ("sum_taper", "sum"))
        if not isinstance(self.cell, bool):  # 1 == True would pass a membership test
            raise ValueError(f"FeatureSRConfig.cell must be true or false, got {self.cell!r}")
        self._numbers(("res_scale", "max_offset", "init_scale", "scale_span"))
        return self


def _bank_init(m: int, init_scale: float) -> Tensor:
    """``m`` kernels ``(log sx, log sy, theta)``: every 4th isotropic, at 0.625, 1 or 1.75 times
    ``init_scale`` in turn; the others elongated (axis ratio e^0.8) at angles from a fixed-seed
    generator, so every model starts from the same spread of shapes."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(m):
        if i % 4 == 0:
            s = init_scale * 2.0 ** ((i // 4) % 3 - 1) * 0.75 + 0.25 * init_scale
            rows.append([math.log(s), math.log(s), 0.0])
        else:
            ls = math.log(init_scale)
            rows.append([ls + 0.4, ls - 0.4, math.pi * float(torch.rand((), generator=g))])
    return torch.tensor(rows, dtype=torch.float32)


class GaussianFeatureSR(SuperResolver):
    """Feature-splatting arbitrary-scale SR: backbone -> per-pixel Gaussians carrying features ->
    sum-mode splat normalised by the splatted weight -> per-pixel MLP decoder.

    Args:
        config: a :class:`FeatureSRConfig` (or the preset name ``"feature"``).
    """

    arch = "feature"  # what a checkpoint records under "arch"

    def __init__(self, config: Optional[FeatureSRConfig] = None) -> None:
        super().__init__()
        if config is None:
            config = FeatureSRConfig()
        if not isinstance(config, FeatureSRConfig):
            raise ValueError(f"GaussianFeatureSR needs a FeatureSRConfig, got {type(config).__name__}")
        self.config = cfg = config.validate()
        c, f = cfg.colors, cfg.n_feats
        self.conv_in = nn.Conv2d(c, f, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(f, cfg.res_scale) for _ in range(cfg.n_blocks)])
        self.conv_body = nn.Conv2d(f, f, 3, padding=1)
        self.head = nn.Conv2d(f, cfg.k * self._per_gaussian(), 3, padding=1)
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)
        if cfg.shape == "bank":
            self.bank = nn.Parameter(_bank_init(cfg.bank_size, cfg.init_scale))  # [M, 3] (log sx, log sy, theta)
        d_in = cfg.feature_dim + c + (2 if cfg.cell else 0)
        layers = []
        for _ in range(cfg.decoder_layers):
            layers += [nn.Conv2d(d_in, cfg.decoder_hidden, 1), nn.ReLU(inplace=True)]
            d_in = cfg.decoder_hidden
        layers.append(nn.Conv2d(d_in, c, 1))
        self.decoder = nn.Sequential(*layers)
        # Zero last layer: the untrained model renders the splatted colour base.
        nn.init.zeros_(self.decoder[-1].weight)
        nn.init.zeros_(self.decoder[-1].bias)
        o0 = partition_opacity(cfg.init_scale, cfg.k)
        self.register_buffer("_logit_o0", torch.tensor(math.log(o0 / (1.0 - o0))), persistent=False)

    def _per_gaussian(self) -> int:
        cfg = self.config
        shape = cfg.bank_size + 1 if cfg.shape == "bank" else 3
        return 2 + shape + cfg.colors + cfg.feature_dim + 1

    @property
    def field_channels(self) -> int:
        """Channels of an encoded field: colour base, features, and the constant-1 weight channel."""
        return self.config.colors + self.config.feature_dim + 1

    # ------------------------------------------------------------------ encode
    def _shape_covariances(self, raw: Tensor) -> Tuple[Tensor, Tensor]:
        """LR px^2 covariances from the shape part of the head; returns ``(cov, rest)``."""
        cfg = self.config
        if cfg.shape == "direct":
            return lr_covariances(raw[..., :3], "scale_rotation", cfg.init_scale, cfg.scale_span), raw[..., 3:]
        m = cfg.bank_size
        logits, adapt = raw[..., :m], raw[..., m]
        bank = covariances_from_scale_rotation(torch.exp(self.bank[:, :2]), self.bank[:, 2])  # [M, 3]
        if cfg.select == "hard" and not self.training:
            mix = bank[logits.argmax(-1)]
        else:  # a convex mix of positive-definite matrices stays positive definite
            mix = torch.softmax(logits, dim=-1) @ bank
        factor = torch.exp(2.0 * cfg.scale_span * torch.tanh(adapt / cfg.scale_span))
        return mix * factor[..., None], raw[..., m + 1 :]

    def encode(self, lr: Tensor) -> Gaussians2D:
        """LR images ``[B, colors, h, w]`` in ``[0, 1]`` -> a batched field of
        ``N = K (h + 2 border) (w + 2 border)`` Gaussians with ``3 + C + 1`` channels
        ``[rgb, feature, 1]``, the config's mode, ``source_size = (w, h)``."""
        cfg = self.config
        lr = self._check_lr(lr)
        h, w = lr.shape[-2:]
        padded = pad_border(lr, cfg.border)
        raw = per_gaussian(self._head_output(padded).float(), cfg.k)  # [B, N, P]; fp32 geometry under AMP
        means = grid_means(cfg.max_offset * torch.tanh(raw[..., 0:2]), h, w, cfg.k, cfg.border)
        cov_lr, rest = self._shape_covariances(raw[..., 2:])
        cov = normalise_covariances(cov_lr, h, w)
        rgb = pixel_colors(padded, cfg.k) + rest[..., : cfg.colors]
        feats = rest[..., cfg.colors : cfg.colors + cfg.feature_dim]
        opacities = torch.sigmoid(rest[..., -1] + self._logit_o0)
        colors = torch.cat([rgb, feats, torch.ones_like(opacities)[..., None]], dim=-1)
        return Gaussians2D(means, cov, colors, opacities, mode=cfg.mode, source_size=(w, h))

    # ------------------------------------------------------------------ decode
    def decode(self, splat: Tensor, cell: Tuple[float, float]) -> Tensor:
        """Splatted ``[..., H, W, 3 + C + 1]`` -> RGB ``[..., H, W, 3]`` (unclamped).

        ``cell = (w / W_out, h / H_out)``: one output pixel's size in LR pixels.

        The decoder's 1x1 convolutions are per-pixel linear layers, so they run as matrix
        products on the splat's own storage (no permutes, no concatenated input): ``[pixels, C]``
        for a contiguous splat, ``[C, pixels]`` per image for a channel-major one (the numba
        backend's); the result is contiguous either way. The first layer's columns are
        reordered once to the splat's ``[rgb, feature]`` order, the cell's constant contribution
        folds into its bias, and each layer is one ``addmm``. Outside autograd the
        pixels go in blocks of :data:`DECODE_PIXELS` (bounded memory)."""
        cfg = self.config
        if splat.shape[-1] != self.field_channels:
            raise ValueError(
                f"a feature field for this model has {self.field_channels} channels "
                f"(3 colour + {cfg.feature_dim} feature + 1 weight), got {splat.shape[-1]}"
            )
        lead = splat.shape[:-1]
        layers = self._decoder_matrices(cell, splat.dtype, splat.device)
        if splat.dim() >= 3 and not splat.is_contiguous() and splat.movedim(-1, -3).is_contiguous():
            # channel-major storage (the numba backend's): decode [C, pixels] blocks in place
            H, W = splat.shape[-3], splat.shape[-2]
            x = splat.movedim(-1, -3).reshape(-1, splat.shape[-1], H * W)  # [B, 3 + C + 1, P], a view
            return self._decode_blocks(x, layers, self._decode_channels, dim=2).reshape(*lead, cfg.colors)
        x = splat.reshape(-1, splat.shape[-1])  # [P, 3 + C + 1], a view of a contiguous splat
        return self._decode_blocks(x, layers, self._decode_pixels, dim=0).reshape(*lead, cfg.colors)

    def _decode_blocks(self, x: Tensor, layers, fn, dim: int) -> Tensor:
        """``fn(x, layers)`` over the whole pixel dim ``dim`` (under autograd, or a small ``x``),
        else over blocks of :data:`DECODE_PIXELS` pixels into one output (decoding is per pixel)."""
        n = x.shape[dim]
        if torch.is_grad_enabled() or n <= DECODE_PIXELS:
            return fn(x, layers)
        lead = x.shape[:dim - 1] if dim else ()  # [n, C] -> [n, 3]; [B, C, n] -> [B, n, 3]
        out = x.new_empty((*lead, n, self.config.colors))
        for p in range(0, n, DECODE_PIXELS):
            k = min(DECODE_PIXELS, n - p)
            out.narrow(len(lead), p, k).copy_(fn(x.narrow(dim, p, k), layers))
        return out

    def _decoder_matrices(self, cell: Tuple[float, float], dtype: torch.dtype, device: torch.device):
        """``[(weight [out, in], bias [out]), ...]`` of the decoder's layers as linear maps on the
        splat's channels; the first takes ``[rgb, feature] / W`` with the cell folded in."""
        cfg = self.config
        convs = [m for m in self.decoder if isinstance(m, nn.Conv2d)]
        mats = [(c.weight.reshape(c.out_channels, c.in_channels).to(dtype), c.bias.to(dtype)) for c in convs]
        w1, b1 = mats[0]
        nf = cfg.feature_dim
        # the decoder's input order is [feature, rgb, cell]; the splat's is [rgb, feature]
        w_in = torch.cat([w1[:, nf : nf + cfg.colors], w1[:, :nf]], dim=1)
        if cfg.cell:
            b1 = b1 + w1[:, nf + cfg.colors :] @ torch.tensor(cell, dtype=dtype, device=device)
        mats[0] = (w_in, b1)
        return mats

    def _decode_pixels(self, x: Tensor, layers) -> Tensor:
        """``[P, 3 + C + 1]`` splatted pixels -> ``[P, 3]`` RGB with the layers of
        :meth:`_decoder_matrices`."""
        mean = x[:, :-1] / x[:, -1:].clamp(min=SPLAT_WEIGHT_FLOOR)  # weighted means of colour and feature
        h = mean
        for i, (w, b) in enumerate(layers):
            h = torch.addmm(b, h, w.t())
            if i + 1 < len(layers):
                h = torch.relu_(h)  # addmm does not keep its output for backward
        return mean[:, : self.config.colors] + h

    def _decode_channels(self, x: Tensor, layers) -> Tensor:
        """Channel-major ``[B, 3 + C + 1, P]`` -> pixel-major ``[B, P, 3]``: :meth:`_decode_pixels`
        on each image's transposed view (strided; the weighted means keep that layout and the first
        layer's BLAS call reads them as they are: a ``W @ X[C, P]`` product ran 2x slower on MKL)."""
        return torch.stack([self._decode_pixels(xb.t(), layers) for xb in x])

    def pixel_decoder(self, field: Gaussians2D, width: int, height: int) -> Callable[[Tensor], Tensor]:
        """The per-pixel decoder for a ``width x height`` render of ``field``: a function from any
        rasterized window ``[..., h, w, 3 + C + 1]`` of that render to RGB ``[..., h, w, 3]``.
        Decoding is per pixel, so a windowed render equals a whole one."""
        if field.source_size is None:
            raise ValueError("a feature field needs its source size (LR width, height) to decode")
        sw, sh = field.source_size
        cell = (float(sw) / float(width), float(sh) / float(height))
        return lambda splat: self.decode(splat, cell)

    def render(
        self, field: Gaussians2D, width: int, height: int, *, backend: str = "auto", tile_size: Optional[int] = None
    ) -> Tensor:
        """Splat an encoded field at ``width x height`` and decode: ``[B, 3, height, width]`` (unclamped)."""
        splat, _ = field.render(width, height, mode=self.config.mode, backend=backend, tile_size=tile_size)
        return self.pixel_decoder(field, width, height)(splat).permute(0, 3, 1, 2)


    def decoder_sha256(self) -> str:
        """A hash of the decoder's weights (and the config it depends on): a saved feature field
        records it, so a re-render can check it is decoded by the network that encoded it."""
        h = hashlib.sha256()
        cfg = self.config
        h.update(f"{cfg.colors},{cfg.feature_dim},{cfg.cell},{cfg.decoder_hidden},{cfg.decoder_layers}".encode())
        for name, t in sorted(self.decoder.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
