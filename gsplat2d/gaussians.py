"""``Gaussians2D``: a Gaussian field in normalised image coordinates that renders at any size."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from gsplat2d import g2d
from gsplat2d._io import load_tensors
from gsplat2d.binning import MODES
from gsplat2d.conics import (
    conics_from_covariances,
    covariances_from_cholesky,
    covariances_from_scale_rotation,
)


__all__ = ["Gaussians2D"]

_FORMAT = "gsplat2d.Gaussians2D"
_VERSION = 1
_FIELDS = ("means", "covariances", "colors", "opacities")


def _as_float_tensor(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


class Gaussians2D:
    """A set of 2D Gaussians in NORMALISED image coordinates.

    ``x = 0`` is the left image edge and ``x = 1`` the right edge; ``y = 0`` the top and
    ``y = 1`` the bottom. The same field renders at any ``width x height`` (the x and y scales
    may differ: a circle in normalised units is an ellipse on a non-square image).

    Fields (``...`` = optional batch dimensions, identical for all fields):
        means: ``[..., N, 2]`` centres in [0, 1] image units.
        covariances: ``[..., N, 3]`` ``(xx, xy, yy)`` in normalised units^2.
        colors: ``[..., N, C]``.
        opacities: ``[..., N]``.

    How the field renders travels with it:
        mode: ``"alpha"`` (front-to-back compositing, the default for a field built by hand) or
            ``"sum"`` (what the SR models and image fitting produce) or ``"sum_taper"`` (the feature
            SR model's: sum mode, cut off smoothly); :meth:`render` uses it
            unless told otherwise, and :meth:`save` / :meth:`load` round-trip it.
        source_size: ``(width, height)`` of the image the field was made from (the LR input of
            an SR encode, the fitted image), or None.

    Build from covariances directly, or with :meth:`from_cholesky` /
    :meth:`from_scale_rotation`. All operations are differentiable.
    """

    __slots__ = ("means", "covariances", "colors", "opacities", "mode", "source_size")

    def __init__(
        self,
        means: Tensor,
        covariances: Tensor,
        colors: Tensor,
        opacities: Tensor,
        *,
        mode: str = "alpha",
        source_size: Optional[Tuple[int, int]] = None,
    ) -> None:
        means = _as_float_tensor(means, "means")
        covariances = _as_float_tensor(covariances, "covariances")
        colors = _as_float_tensor(colors, "colors")
        opacities = _as_float_tensor(opacities, "opacities")
        if means.dim() < 2 or means.shape[-1] != 2:
            raise ValueError(f"means must have shape [..., N, 2], got {tuple(means.shape)}")
        batch, n = tuple(means.shape[:-2]), means.shape[-2]
        expect = {
            "covariances": (covariances, batch + (n, 3), "[..., N, 3]"),
            "opacities": (opacities, batch + (n,), "[..., N]"),
        }
        for name, (t, shape, desc) in expect.items():
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"{name} must have shape {desc} = {shape} to match means {tuple(means.shape)}, "
                    f"got {tuple(t.shape)}"
                )
        if colors.dim() < 2 or tuple(colors.shape[:-1]) != batch + (n,) or colors.shape[-1] < 1:
            raise ValueError(
                f"colors must have shape [..., N, C] = {batch + (n,)} + (C,) with C >= 1 to match "
                f"means {tuple(means.shape)}, got {tuple(colors.shape)}"
            )
        for name, t in (("covariances", covariances), ("colors", colors), ("opacities", opacities)):
            if t.device != means.device:
                raise ValueError(f"{name} is on {t.device} but means is on {means.device}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if source_size is not None:
            source_size = (_check_size(source_size[0], "source_size[0]"),
                           _check_size(source_size[1], "source_size[1]"))
        self.means = means
        self.covariances = covariances
        self.colors = colors
        self.opacities = opacities
        self.mode = mode
        self.source_size = source_size

    def _like(self, means: Tensor, covariances: Tensor, colors: Tensor, opacities: Tensor) -> "Gaussians2D":
        """New field with these tensors and this field's mode and source size."""
        return Gaussians2D(means, covariances, colors, opacities, mode=self.mode, source_size=self.source_size)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_cholesky(cls, means: Tensor, cholesky: Tensor, colors: Tensor, opacities: Tensor,
                      **kwargs: Any) -> "Gaussians2D":
        """From the Cholesky factor ``(l11, l21, l22)`` ``[..., N, 3]`` of the covariance
        (normalised units): ``Sigma = L L^T``. ``kwargs``: ``mode``, ``source_size``."""
        return cls(means, covariances_from_cholesky(cholesky), colors, opacities, **kwargs)

    @classmethod
    def from_scale_rotation(
        cls, means: Tensor, scales: Tensor, rotations: Tensor, colors: Tensor, opacities: Tensor,
        **kwargs: Any,
    ) -> "Gaussians2D":
        """From standard deviations ``scales [..., N, 2]`` (normalised units) and angles
        ``rotations [..., N]`` in radians (``Sigma = R diag(sx^2, sy^2) R^T``, see
        :func:`gsplat2d.conics_from_scale_rotation` for the convention). ``kwargs``: ``mode``,
        ``source_size``."""
        return cls(means, covariances_from_scale_rotation(scales, rotations), colors, opacities, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def num_gaussians(self) -> int:
        """N, the number of Gaussians (per batch element)."""
        return int(self.means.shape[-2])

    def __len__(self) -> int:
        return self.num_gaussians

    @property
    def batch_shape(self) -> torch.Size:
        """Leading batch dimensions (``means.shape[:-2]``)."""
        return self.means.shape[:-2]

    @property
    def channels(self) -> int:
        """C, the number of colour channels."""
        return int(self.colors.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def __repr__(self) -> str:
        size = f", source_size={self.source_size}" if self.source_size else ""
        return (
            f"Gaussians2D(num_gaussians={self.num_gaussians}, batch_shape={tuple(self.batch_shape)}, "
            f"channels={self.channels}, mode={self.mode!r}{size}, dtype={self.dtype}, device={self.device})"
        )

    # ------------------------------------------------------------------ conversions
    def to(self, *args: Any, **kwargs: Any) -> "Gaussians2D":
        """``Tensor.to`` applied to every field (device and/or dtype); returns a new object."""
        return self._like(
            self.means.to(*args, **kwargs),
            self.covariances.to(*args, **kwargs),
            self.colors.to(*args, **kwargs),
            self.opacities.to(*args, **kwargs),
        )

    def detach(self) -> "Gaussians2D":
        """A copy whose fields are detached from the autograd graph (storage is shared)."""
        return self._like(
            self.means.detach(), self.covariances.detach(), self.colors.detach(), self.opacities.detach()
        )

    # ------------------------------------------------------------------ files
    def save(
        self,
        path: Union[str, "os.PathLike[str]"],
        *,
        codec: str = "lossless",
        quant: Optional[g2d.QuantSpec] = None,
        meta: Optional[Dict[str, Any]] = None,
    ) -> int:
        """Write the field to ``path`` (a ``.g2d`` file); returns the file size in bytes.

        One container (:mod:`gsplat2d.g2d`: magic, version, metadata, CRC-32), two encodings:

        * ``codec="lossless"`` (default): float32 arrays; a float32 field reads back bit-exactly.
        * ``codec="quantized"``: the compact codec (fixed-point positions, few-bit covariances,
          colours and opacities; bit depths from ``quant``, default
          ``QuantSpec.for_size(width, height)`` when the field has a source size, else
          ``QuantSpec()``).

        Files of the older torch encoding (written by gsplat2d 0.1 before this container was the
        default) still load; nothing writes them any more.

        The file records how the field renders: its :attr:`mode` and :attr:`source_size`
        (``{"mode", "width", "height"}``), which :meth:`load` restores. ``meta`` (optional) adds
        ``"background": [...]`` and any JSON-serialisable extras (a ``mode``/``width``/``height``
        given there is what the file records). :meth:`load_with_meta` returns it. The write is
        atomic (temporary file in the same folder, then rename), so an interrupted save never
        leaves a half-written file.
        """
        meta = g2d.validate_meta(self._file_meta(meta))
        if codec not in ("lossless", "quantized"):
            raise ValueError(f"codec must be 'lossless' or 'quantized', got {codec!r}")
        if codec == "lossless" and quant is not None:
            raise ValueError("quant is only used with codec='quantized'")
        spec = None
        if codec == "quantized":
            spec = quant
            if spec is None:
                w, h = meta.get("width"), meta.get("height")
                spec = g2d.QuantSpec.for_size(w, h) if w and h else g2d.QuantSpec()
        data = g2d.encode(self, quant=spec, meta=meta)
        g2d.write_atomic(path, data)
        return len(data)

    def _file_meta(self, meta: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        own: Dict[str, Any] = {"mode": self.mode}
        if self.source_size is not None:
            own["width"], own["height"] = self.source_size
        return {**own, **(meta or {})}

    @classmethod
    def load(
        cls, path: Union[str, "os.PathLike[str]"], *, map_location: Union[str, torch.device] = "cpu"
    ) -> "Gaussians2D":
        """Read a field written by :meth:`save` (any of its encodings; told apart by the first
        bytes of the file).

        Loading never executes code from the file: the torch encoding goes through
        ``torch.load(weights_only=True)`` (only tensors and plain containers are accepted), the
        binary ones are parsed with ``struct``/``numpy`` after checking magic, version, sizes and
        a CRC32. Errors name the file and what is wrong.
        """
        return cls.load_with_meta(path, map_location=map_location)[0]

    @classmethod
    def load_with_meta(
        cls, path: Union[str, "os.PathLike[str]"], *, map_location: Union[str, torch.device] = "cpu"
    ) -> Tuple["Gaussians2D", Dict[str, Any]]:
        """Like :meth:`load`, also returning the file's metadata dict (``{}`` when it has none;
        keys as in :meth:`save`: ``mode``, ``width``, ``height``, ``background``, extras)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Gaussian file not found: {path}")
        with open(path, "rb") as f:
            head = f.read(len(g2d.MAGIC))
            if g2d.is_binary_g2d(head):
                field, meta, _ = cls.from_g2d_bytes(head + f.read(), source=path)
                return field.to(map_location), meta
        payload = load_tensors(path, map_location, "gsplat2d Gaussian file")
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a gsplat2d Gaussian file (no '{_FORMAT}' header)")
        if payload.get("version") != _VERSION:
            raise ValueError(
                f"{path} has Gaussian file version {payload.get('version')!r}; this gsplat2d "
                f"reads version {_VERSION}"
            )
        missing = [k for k in _FIELDS if not isinstance(payload.get(k), Tensor)]
        if missing:
            raise ValueError(f"{path} lacks the tensor field(s) {', '.join(missing)}")
        try:
            field = cls(*(payload[k] for k in _FIELDS))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: inconsistent Gaussian field: {e}") from None
        meta = g2d.validate_meta(payload.get("meta"), path)
        return _with_meta(field, meta), meta

    @classmethod
    def from_g2d_bytes(cls, data: bytes, *, source: str = "<bytes>") -> Tuple["Gaussians2D", Dict[str, Any], Dict[str, Any]]:
        """A field from the bytes of a binary ``.g2d`` file: ``(field, meta, info)``, the field
        float32 on the CPU with the mode and source size the metadata records (see
        :func:`gsplat2d.g2d.decode` for ``info``)."""
        tensors, meta, info = g2d.decode(data, source=source)
        field = cls(tensors["means"], tensors["covariances"], tensors["colors"], tensors["opacities"])
        return _with_meta(field, meta), meta, info

    def to_pixels(self, width: int, height: int) -> Tuple[Tensor, Tensor]:
        """Pixel-space means and conics for a ``width x height`` image.

        ``means_px = means * (W, H)``; ``Sigma_px = S Sigma S`` with ``S = diag(W, H)``, i.e.
        ``(xx W^2, xy W H, yy H^2)``; ``conics_px = Sigma_px^{-1}``.

        Returns:
            means_px ``[..., N, 2]`` in pixels, conics_px ``[..., N, 3]`` in 1/pixel^2.
        """
        w, h = _check_size(width, "width"), _check_size(height, "height")
        scale = torch.tensor([float(w), float(h)], dtype=self.means.dtype, device=self.means.device)
        means_px = self.means * scale
        cscale = torch.tensor(
            [float(w) * w, float(w) * h, float(h) * h], dtype=self.covariances.dtype, device=self.covariances.device
        )
        conics_px = conics_from_covariances(self.covariances * cscale)
        return means_px, conics_px

    def render(
        self,
        width: int,
        height: int,
        *,
        mode: Optional[str] = None,
        background: Optional[Tensor] = None,
        tile_size: Optional[int] = None,
        backend: str = "auto",
    ) -> Tuple[Tensor, Tensor]:
        """Render at ``width x height`` pixels with :func:`gsplat2d.rasterize`, in the field's own
        :attr:`mode` unless ``mode`` is given.

        Returns:
            image ``[..., H, W, C]`` and alpha ``[..., H, W, 1]``.
        """
        from gsplat2d.rasterize import rasterize

        means_px, conics_px = self.to_pixels(width, height)
        out = rasterize(
            means_px,
            conics_px,
            self.colors,
            self.opacities,
            width,
            height,
            mode=self.mode if mode is None else mode,
            background=background,
            tile_size=tile_size,
            backend=backend,
        )
        return out[0], out[1]


def _with_meta(field: "Gaussians2D", meta: Dict[str, Any]) -> "Gaussians2D":
    """``field`` with the mode and source size a file's metadata records (files written before
    fields carried them: alpha mode, no size)."""
    w, h = meta.get("width"), meta.get("height")
    size = (w, h) if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 else None
    return Gaussians2D(field.means, field.covariances, field.colors, field.opacities,
                       mode=meta.get("mode", "alpha"), source_size=size)


def _check_size(v: Union[int, Any], name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        try:
            import numbers

            if isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) > 0:
                return int(v)
        except Exception:  # pragma: no cover
            pass
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v
