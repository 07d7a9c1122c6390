"""The binary ``.g2d`` container: a lossless float32 codec and a compact quantised codec.

Both are written by :meth:`gsplat2d.Gaussians2D.save` (``codec="lossless"`` / ``"quantized"``)
and read by :meth:`gsplat2d.Gaussians2D.load`, which tells them from the torch-container
``.g2d`` (the default of ``save``) by the first 8 bytes. Parsing uses only ``struct``, ``numpy``
and ``json``: nothing in a file is ever executed, and every size is checked before it is used.

File layout (all integers little-endian; the full spec with byte offsets is in
``docs/fitting.md``)::

    magic        8 bytes  b"\\x89G2D\\r\\n\\x1a\\n"
    version      u16      1
    codec        u8       0 = lossless float32, 1 = quantised
    flags        u8       bit 0: one opacity for all Gaussians (stored once as float32)
    N            u32      Gaussians per batch element
    C            u16      colour channels
    ndim         u8       number of batch dimensions (<= 8)
    reserved     u8       0
    batch dims   ndim x u32
    meta_len     u32      (<= 65536)
    meta         meta_len bytes of UTF-8 JSON (an object: e.g. {"mode": "sum", "width": 768, ...})
    payload      codec-specific (below)
    crc32        u32      zlib.crc32 of every byte before it

    lossless payload:  means f32 [*, N, 2], covariances f32 [*, N, 3], colors f32 [*, N, C],
                       opacities f32 [*, N] (or one f32 with flag bit 0)
    quantised payload: pos_bits u8, cov_bits u8, color_bits u8, opacity_bits u8,
                       cov_encoding u8 (0 = log-Cholesky, 1 = log-scale + rotation), 3 x u8 0,
                       ranges f32 (lo, hi) for 2 + 3 + C (+1) components,
                       then bit-packed codes (MSB first, each stream padded to a whole byte):
                       means [*, N, 2] at pos_bits, covariance [*, N, 3] at cov_bits,
                       colors [*, N, C] at color_bits, opacities [*, N] at opacity_bits
                       (or one f32 with flag bit 0).

A value ``x`` of a component with range ``[lo, hi]`` is stored as
``q = round((x - lo) / (hi - lo) * (2^b - 1))`` and read back as ``lo + q * (hi - lo) / (2^b - 1)``.
Covariances are quantised in a positive-definite-by-construction space: ``log-Cholesky``
(``log l11, l21 / l22, log l22`` of ``Sigma = L L^T``) or ``log-scale + rotation``
(``log sx, log sy, theta`` with ``sx >= sy``, ``theta`` in ``[0, pi)``), all in the
normalised units of :class:`Gaussians2D`.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from gsplat2d._io import atomic_write
from gsplat2d.binning import MODES

__all__ = [
    "MAGIC",
    "QuantSpec",
    "encode",
    "decode",
    "fake_quantize",
    "quantize_dequantize",
    "is_binary_g2d",
    "write_atomic",
    "validate_meta",
    "encoded_size",
]

MAGIC = b"\x89G2D\r\n\x1a\n"
VERSION = 1
CODEC_LOSSLESS = 0
CODEC_QUANTIZED = 1
_CODEC_NAMES = {CODEC_LOSSLESS: "lossless", CODEC_QUANTIZED: "quantized"}
FLAG_CONST_OPACITY = 1
_COV_ENCODINGS = ("cholesky", "scale_rotation")
MAX_META = 65536
MAX_NDIM = 8
_HEAD = struct.Struct("<8sHBBIHBB")  # magic, version, codec, flags, N, C, ndim, reserved
_QHEAD = struct.Struct("<BBBBB3x")


@dataclass(frozen=True)
class QuantSpec:
    """Bit depths of the quantised codec.

    pos_bits: fixed-point bits per coordinate over the field's own x / y range. 16 (the default)
        is a step of 1/65535 of the range, ~0.012 px on a 768-pixel-wide image (fp16 in [0, 1]
        would be up to 0.37 px); :meth:`for_size` picks a 1/16-pixel step for a known size.
    cov_bits: bits per covariance component (3 per Gaussian, in ``cov_encoding`` space).
    color_bits: bits per colour channel, over each channel's own range.
    opacity_bits: bits per opacity (unused when all opacities are equal: one float32 is stored).
    cov_encoding: ``"scale_rotation"`` (log sx, log sy, angle; the default) or ``"cholesky"``
        (log l11, l21/l22, log l22). At equal bits the first rendered ~0.1-0.3 dB closer to the
        float32 field on fitted Kodak crops (``docs/fitting.md``).
    """

    pos_bits: int = 16
    cov_bits: int = 7
    color_bits: int = 7
    opacity_bits: int = 6
    cov_encoding: str = "scale_rotation"

    @classmethod
    def for_size(cls, width: int, height: int, **kwargs: Any) -> "QuantSpec":
        """The defaults with ``pos_bits`` = ``ceil(log2(max(W, H))) + 4`` clamped to [8, 16]: a
        position step of at most 1/16 pixel when the field is rendered at ``width x height``
        (12 bits for 256 px, 14 for 768 px). ``kwargs`` override any field."""
        side = max(int(width), int(height), 1)
        bits = min(16, max(8, int(math.ceil(math.log2(side))) + 4))
        return cls(**{"pos_bits": bits, **kwargs})

    def __post_init__(self) -> None:
        for name in ("pos_bits", "cov_bits", "color_bits", "opacity_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 24:
                raise ValueError(f"QuantSpec.{name} must be an int in [1, 24], got {v!r}")
        if self.cov_encoding not in _COV_ENCODINGS:
            raise ValueError(f"QuantSpec.cov_encoding must be one of {_COV_ENCODINGS}, got {self.cov_encoding!r}")

    def bits_per_gaussian(self, channels: int, const_opacity: bool) -> int:
        return 2 * self.pos_bits + 3 * self.cov_bits + channels * self.color_bits + (
            0 if const_opacity else self.opacity_bits
        )


# ---------------------------------------------------------------------------------- metadata


def validate_meta(meta: Optional[Dict[str, Any]], source: str = "meta") -> Dict[str, Any]:
    """Check the known keys of a field's metadata; returns a plain-dict copy.

    Known keys (all optional): ``mode`` (one of :data:`gsplat2d.binning.MODES`, the mode the field renders
    with), ``width`` / ``height`` (positive ints, the native size, e.g. of the fitted image),
    ``background`` (list of floats, alpha mode). Other keys must be JSON-serialisable and are
    kept as they are.
    """
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise ValueError(f"{source}: metadata must be a dict with string keys, got {type(meta).__name__}")
    out = dict(meta)
    if "mode" in out and out["mode"] not in MODES:
        raise ValueError(f"{source}: meta 'mode' must be one of {MODES}, got {out['mode']!r}")
    for k in ("width", "height"):
        if k in out:
            v = out[k]
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65536:
                raise ValueError(f"{source}: meta {k!r} must be an int in [1, 65536], got {v!r}")
    if "background" in out and out["background"] is not None:
        bg = out["background"]
        if not isinstance(bg, (list, tuple)) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in bg
        ):
            raise ValueError(f"{source}: meta 'background' must be a list of numbers, got {bg!r}")
        out["background"] = [float(x) for x in bg]
    return out


# ---------------------------------------------------------------------------------- covariance spaces
def _cov_to_code_space(cov: Tensor, encoding: str) -> Tensor:
    """``[..., 3]`` covariance ``(xx, xy, yy)`` -> the 3 quantised components (float64)."""
    cov = cov.to(torch.float64)
    xx, xy, yy = cov.unbind(-1)
    if encoding == "cholesky":
        l11 = torch.sqrt(xx)
        l21 = xy / l11
        l22 = torch.sqrt(torch.clamp(yy - l21 * l21, min=0.0))
        return torch.stack([torch.log(l11), l21 / l22, torch.log(l22)], dim=-1)
    # scale_rotation: eigen-decomposition of the symmetric 2x2 matrix
    mean = 0.5 * (xx + yy)
    rad = torch.sqrt(0.25 * (xx - yy) ** 2 + xy * xy)
    l1, l2 = mean + rad, torch.clamp(mean - rad, min=0.0)
    theta = 0.5 * torch.atan2(2 * xy, xx - yy)  # direction of the major axis, in (-pi/2, pi/2]
    theta = torch.remainder(theta, math.pi)
    return torch.stack([0.5 * torch.log(l1), 0.5 * torch.log(l2), theta], dim=-1)


def _code_space_to_cov(v: Tensor, encoding: str) -> Tensor:
    a, b, c = v.unbind(-1)
    if encoding == "cholesky":
        l11, l22 = torch.exp(a), torch.exp(c)
        l21 = b * l22
        return torch.stack([l11 * l11, l11 * l21, l21 * l21 + l22 * l22], dim=-1)
    sx, sy = torch.exp(a), torch.exp(b)
    co, si = torch.cos(c), torch.sin(c)
    vx, vy = sx * sx, sy * sy
    return torch.stack([co * co * vx + si * si * vy, co * si * (vx - vy), si * si * vx + co * co * vy], dim=-1)


# ---------------------------------------------------------------------------------- scalar quantiser
def _ranges(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-component (last dim) float32-representable ``lo, hi`` of ``x [..., K]`` (float64)."""
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] == 0:
        z = torch.zeros(x.shape[-1], dtype=torch.float64, device=x.device)
        return z, z
    lo = flat.min(0).values.to(torch.float32).to(torch.float64)
    hi = flat.max(0).values.to(torch.float32).to(torch.float64)
    # float32 rounding may move lo above the true min / hi below the max: the codes are clamped
    return lo, hi


def _codes(x: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
    levels = (1 << bits) - 1
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    q = torch.round((x - lo) / safe * levels)
    q = torch.where(span > 0, q, torch.zeros_like(q))
    return q.clamp_(0, levels).to(torch.int64)


def _dequant(q: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
    levels = (1 << bits) - 1
    return lo + q.to(torch.float64) * ((hi - lo) / levels)


def _const_opacity(op: Tensor) -> bool:
    return op.numel() > 0 and bool((op == op.reshape(-1)[0]).all())


class _Quantized:
    """Codes and ranges of one field (computed once, used by the encoder and by fake quantisation)."""

    def __init__(self, field, spec: QuantSpec) -> None:
        # computed on the field's device (QAT on a GPU stays there); bytes are written from the CPU
        means = field.means.detach().to(torch.float64)
        cov = field.covariances.detach()
        colors = field.colors.detach().to(torch.float64)
        op = field.opacities.detach().to(torch.float64)
        self.device = means.device
        for name, t in (("means", means), ("covariances", cov), ("colors", colors), ("opacities", op)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"cannot quantise a field with non-finite {name}")
        xx, xy, yy = cov.to(torch.float64).unbind(-1)
        if not bool(((xx > 0) & (yy > 0) & (xx * yy - xy * xy > 0)).all()):
            raise ValueError("cannot quantise a field with a covariance that is not positive definite")
        cv = _cov_to_code_space(cov, spec.cov_encoding)
        if not bool(torch.isfinite(cv).all()):
            raise ValueError("cannot quantise a field with a (numerically) singular covariance")
        self.spec = spec
        self.const_opacity = _const_opacity(op)
        self.parts = []  # (name, codes, lo, hi, bits)
        for name, x, bits in (("means", means, spec.pos_bits), ("cov", cv, spec.cov_bits),
                              ("colors", colors, spec.color_bits)):
            lo, hi = _ranges(x)
            self.parts.append((name, _codes(x, lo, hi, bits), lo, hi, bits))
        if self.const_opacity:
            self.opacity_value = float(np.float32(op.reshape(-1)[0].item()))
        else:
            x = op[..., None]
            lo, hi = _ranges(x)
            self.parts.append(("opacities", _codes(x, lo, hi, spec.opacity_bits), lo, hi, spec.opacity_bits))
        self.shape_op = tuple(op.shape)

    def dequantized(self) -> Dict[str, Tensor]:
        """float32 tensors exactly as :func:`decode` returns them."""
        return _dequantize_parts(
            {name: (q, lo, hi, bits) for name, q, lo, hi, bits in self.parts},
            self.spec.cov_encoding, self.shape_op, None if not self.const_opacity else self.opacity_value,
            self.device,
        )


def _dequantize_parts(parts, encoding, shape_op, const_op, device=None) -> Dict[str, Tensor]:
    out = {}
    q, lo, hi, bits = parts["means"]
    out["means"] = _dequant(q, lo, hi, bits).to(torch.float32)
    q, lo, hi, bits = parts["cov"]
    out["covariances"] = _code_space_to_cov(_dequant(q, lo, hi, bits), encoding).to(torch.float32)
    q, lo, hi, bits = parts["colors"]
    out["colors"] = _dequant(q, lo, hi, bits).to(torch.float32)
    if const_op is not None:
        out["opacities"] = torch.full(shape_op, const_op, dtype=torch.float32, device=device)
    else:
        q, lo, hi, bits = parts["opacities"]
        out["opacities"] = _dequant(q, lo, hi, bits)[..., 0].to(torch.float32)
    return out


def quantize_dequantize(field, spec: Optional[QuantSpec] = None):
    """The field exactly as the quantised codec stores it (``decode(encode(field, spec))``; bit for
    bit on the CPU, to float32 rounding of float64 math on other devices), without writing bytes.
    Returns a new float32 :class:`Gaussians2D` on the field's device."""
    spec = spec or QuantSpec()
    d = _Quantized(field, spec).dequantized()
    return field._like(d["means"], d["covariances"], d["colors"], d["opacities"]).to(field.device)


def fake_quantize(field, spec: Optional[QuantSpec] = None):
    """Straight-through quantisation for quantisation-aware training: the forward values are
    those of :func:`quantize_dequantize`, the gradient passes to ``field``'s tensors as if no
    quantisation happened (``x + (Q(x) - x).detach()``)."""
    q = quantize_dequantize(field, spec)

    def ste(x: Tensor, xq: Tensor) -> Tensor:
        return x + (xq.to(x.dtype) - x).detach()

    return field._like(
        ste(field.means, q.means),
        ste(field.covariances, q.covariances),
        ste(field.colors, q.colors),
        ste(field.opacities, q.opacities),
    )


# ---------------------------------------------------------------------------------- bit packing
def _pack(codes: Tensor, bits: int) -> bytes:
    """Codes ``[...]`` (ints < 2^bits) -> bytes, MSB first, padded to a whole byte."""
    c = codes.reshape(-1).cpu().numpy().astype(np.uint32)
    if c.size == 0:
        return b""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    bitarr = ((c[:, None] >> shifts[None, :]) & 1).astype(np.uint8)
    return np.packbits(bitarr.reshape(-1)).tobytes()


def _unpack(buf: bytes, count: int, bits: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    bitarr = np.unpackbits(np.frombuffer(buf, dtype=np.uint8))[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    return bitarr.astype(np.int64) @ weights


def _packed_len(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


# ---------------------------------------------------------------------------------- encode / decode
def _header(codec: int, flags: int, batch: Tuple[int, ...], n: int, c: int, meta: Dict[str, Any]) -> bytes:
    if len(batch) > MAX_NDIM:
        raise ValueError(f"at most {MAX_NDIM} batch dimensions can be stored, got {len(batch)}")
    if n >= 2**32 or c >= 2**16 or any(b >= 2**32 for b in batch):
        raise ValueError(f"field too large for the .g2d header (N={n}, C={c}, batch={batch})")
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(meta_bytes) > MAX_META:
        raise ValueError(f"metadata is {len(meta_bytes)} bytes of JSON; at most {MAX_META} can be stored")
    return (
        _HEAD.pack(MAGIC, VERSION, codec, flags, n, c, len(batch), 0)
        + struct.pack(f"<{len(batch)}I", *batch)
        + struct.pack("<I", len(meta_bytes))
        + meta_bytes
    )


def encode(field, *, quant: Optional[QuantSpec] = None, meta: Optional[Dict[str, Any]] = None) -> bytes:
    """Serialise a :class:`Gaussians2D` into the binary ``.g2d`` format.

    Args:
        field: the Gaussians (any device and float dtype; stored from the CPU).
        quant: ``None`` = lossless float32 (a float32 field reads back bit-exactly), or a
            :class:`QuantSpec` for the compact quantised codec.
        meta: optional metadata (see :func:`validate_meta`).

    Returns:
        The exact bytes of the file (``len()`` is the size on disk).
    """
    meta = validate_meta(meta)
    batch = tuple(int(b) for b in field.batch_shape)
    n, c = field.num_gaussians, field.channels
    op = field.opacities.detach().cpu()
    if quant is None:
        const = _const_opacity(op)
        flags = FLAG_CONST_OPACITY if const else 0
        parts = [
            field.means.detach().cpu().to(torch.float32).contiguous().numpy().tobytes(),
            field.covariances.detach().cpu().to(torch.float32).contiguous().numpy().tobytes(),
            field.colors.detach().cpu().to(torch.float32).contiguous().numpy().tobytes(),
            (op.reshape(-1)[:1] if const else op).to(torch.float32).contiguous().numpy().tobytes(),
        ]
        body = _header(CODEC_LOSSLESS, flags, batch, n, c, meta) + b"".join(parts)
    else:
        if not isinstance(quant, QuantSpec):
            raise TypeError(f"quant must be a QuantSpec or None, got {type(quant).__name__}")
        qz = _Quantized(field, quant)
        flags = FLAG_CONST_OPACITY if qz.const_opacity else 0
        ranges, streams = [], []
        for _, q, lo, hi, bits in qz.parts:
            ranges.append(np.stack([lo.cpu().numpy(), hi.cpu().numpy()], -1).astype("<f4").tobytes())
            streams.append(_pack(q, bits))
        parts = [
            _QHEAD.pack(quant.pos_bits, quant.cov_bits, quant.color_bits, quant.opacity_bits,
                        _COV_ENCODINGS.index(quant.cov_encoding)),
            *ranges,
            *streams,
        ]
        if qz.const_opacity:
            parts.append(struct.pack("<f", qz.opacity_value))
        body = _header(CODEC_QUANTIZED, flags, batch, n, c, meta) + b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def encoded_size(field, *, quant: Optional[QuantSpec] = None, meta: Optional[Dict[str, Any]] = None) -> int:
    """Exact size in bytes of the file :func:`encode` would write."""
    return len(encode(field, quant=quant, meta=meta))


def is_binary_g2d(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts with the binary ``.g2d`` magic."""
    return head[: len(MAGIC)] == MAGIC


class _Reader:
    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(
                f"{self.source} is truncated: {what} needs {n} bytes at offset {self.pos}, the file has "
                f"{len(self.data)} bytes"
            )
        out = self.data[self.pos: self.pos + n]
        self.pos += n
        return out


def _read_header(data: bytes, source: str) -> Tuple[_Reader, int, int, int, int, Tuple[int, ...], Dict[str, Any]]:
    """Check magic, version, codec and CRC, then read the header: ``(reader positioned at the
    payload, codec, flags, N, C, batch shape, metadata)``. The reader stops before the CRC."""
    if not is_binary_g2d(data):
        raise ValueError(f"{source} is not a binary gsplat2d .g2d file (wrong magic bytes)")
    r = _Reader(data, source)
    magic, version, codec, flags, n, c, ndim, _ = _HEAD.unpack(r.take(_HEAD.size, "the header"))
    if version != VERSION:
        raise ValueError(f"{source} is .g2d binary version {version}; this gsplat2d reads version {VERSION}")
    if codec not in _CODEC_NAMES:
        raise ValueError(f"{source} uses unknown codec id {codec}")
    if len(data) < r.pos + 4:
        raise ValueError(f"{source} is truncated ({len(data)} bytes)")
    stored_crc = struct.unpack("<I", data[-4:])[0]
    if zlib.crc32(data[:-4]) & 0xFFFFFFFF != stored_crc:
        raise ValueError(
            f"{source} is corrupted or truncated (CRC32 mismatch over its {len(data)} bytes)"
        )
    r.data = data[:-4]  # the payload ends before the checksum
    if ndim > MAX_NDIM:
        raise ValueError(f"{source}: {ndim} batch dimensions (at most {MAX_NDIM})")
    if c < 1:
        raise ValueError(f"{source}: a field needs at least one colour channel, header says C=0")
    batch = struct.unpack(f"<{ndim}I", r.take(4 * ndim, "the batch shape"))
    return r, codec, flags, n, c, batch, _read_meta(r, source)


def _read_meta(r: _Reader, source: str) -> Dict[str, Any]:
    """The length-prefixed JSON metadata, validated."""
    (meta_len,) = struct.unpack("<I", r.take(4, "the metadata length"))
    if meta_len > MAX_META:
        raise ValueError(f"{source}: metadata length {meta_len} exceeds {MAX_META} bytes")
    try:
        meta = json.loads(r.take(meta_len, "the metadata").decode("utf-8")) if meta_len else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{source}: metadata is not valid JSON: {e}") from None
    return validate_meta(meta, source)


def _decode_lossless(
    r: _Reader, source: str, batch: Tuple[int, ...], n: int, c: int, count: int, const: bool,
) -> Dict[str, Tensor]:
    """The float32 payload after the header (``count`` Gaussians in all)."""
    remaining = len(r.data) - r.pos
    expect = 4 * count * (2 + 3 + c) + 4 * (1 if const else count)
    if remaining != expect:
        raise ValueError(
            f"{source}: payload is {remaining} bytes, a lossless field of {count} Gaussians x "
            f"{c} channels needs {expect}"
        )

    def arr(k: int, what: str) -> Tensor:
        return torch.from_numpy(np.frombuffer(r.take(4 * k, what), dtype="<f4").astype(np.float32))

    means = arr(count * 2, "means").reshape(*batch, n, 2)
    cov = arr(count * 3, "covariances").reshape(*batch, n, 3)
    colors = arr(count * c, "colors").reshape(*batch, n, c)
    if const:
        op = torch.full((*batch, n), float(arr(1, "opacity")[0]), dtype=torch.float32)
    else:
        op = arr(count, "opacities").reshape(*batch, n)
    return {"means": means, "covariances": cov, "colors": colors, "opacities": op}


def _read_quant_spec(r: _Reader, source: str) -> QuantSpec:
    """The quantiser header, checked before :class:`QuantSpec` sees it (so errors name ``source``)."""
    pb, cb, colb, ob, enc = _QHEAD.unpack(r.take(_QHEAD.size, "the quantiser header"))
    for name, v in (("pos_bits", pb), ("cov_bits", cb), ("color_bits", colb), ("opacity_bits", ob)):
        if not 1 <= v <= 24:
            raise ValueError(f"{source}: {name}={v} is outside [1, 24]")
    if enc >= len(_COV_ENCODINGS):
        raise ValueError(f"{source}: unknown covariance encoding id {enc}")
    return QuantSpec(pb, cb, colb, ob, _COV_ENCODINGS[enc])


def _decode_quantized(
    r: _Reader, source: str, batch: Tuple[int, ...], n: int, c: int, count: int, const: bool,
) -> Tuple[Dict[str, Tensor], QuantSpec]:
    """The quantised payload after the header, dequantised, and its bit depths."""
    spec = _read_quant_spec(r, source)
    fields = [("means", 2, spec.pos_bits), ("cov", 3, spec.cov_bits), ("colors", c, spec.color_bits)]
    if not const:
        fields.append(("opacities", 1, spec.opacity_bits))
    n_comp = sum(k for _, k, _ in fields)
    remaining = len(r.data) - r.pos
    expect = 8 * n_comp + sum(_packed_len(count * k, bits) for _, k, bits in fields) + (4 if const else 0)
    if remaining != expect:
        raise ValueError(
            f"{source}: payload is {remaining} bytes, a quantised field of {count} Gaussians x "
            f"{c} channels at these bit depths needs {expect}"
        )
    rng = {}
    for name, k, _ in fields:
        lohi = np.frombuffer(r.take(8 * k, f"the {name} ranges"), dtype="<f4").astype(np.float64).reshape(k, 2)
        if not np.isfinite(lohi).all():
            raise ValueError(f"{source}: non-finite {name} range")
        rng[name] = (torch.from_numpy(lohi[:, 0].copy()), torch.from_numpy(lohi[:, 1].copy()))
    parts = {}
    for name, k, bits in fields:
        codes = _unpack(r.take(_packed_len(count * k, bits), f"the {name} codes"), count * k, bits)
        shape = (*batch, n, k)
        parts[name] = (torch.from_numpy(codes).reshape(shape), rng[name][0], rng[name][1], bits)
    const_op = None
    if const:
        const_op = float(struct.unpack("<f", r.take(4, "the opacity"))[0])
    return _dequantize_parts(parts, spec.cov_encoding, (*batch, n), const_op), spec


def decode(data: bytes, *, source: str = "<bytes>"):
    """Parse a binary ``.g2d`` file's bytes.

    Returns:
        ``(tensors, meta, info)``: float32 CPU tensors ``{"means", "covariances", "colors",
        "opacities"}`` (what :meth:`gsplat2d.Gaussians2D.from_g2d_bytes` builds a field from;
        this module does not import :mod:`gsplat2d.gaussians`), the metadata dict, and a dict
        describing the file (``codec``, ``bytes``, and for quantised files the bit depths).

    Raises:
        ValueError naming ``source`` for a foreign, truncated, corrupted (CRC mismatch) or
        inconsistent file, or an unsupported version.
    """
    data = bytes(data)
    r, codec, flags, n, c, batch, meta = _read_header(data, source)
    count = n
    for b in batch:
        count *= b
    const = bool(flags & FLAG_CONST_OPACITY)
    if codec == CODEC_LOSSLESS:
        tensors = _decode_lossless(r, source, batch, n, c, count, const)
        info = {"codec": "lossless", "bytes": len(data)}
    else:
        tensors, spec = _decode_quantized(r, source, batch, n, c, count, const)
        info = {"codec": "quantized", "bytes": len(data), **asdict(spec)}
    return tensors, meta, info


def write_atomic(path: Union[str, "os.PathLike[str]"], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    atomic_write(path, lambda f: f.write(data), suffix=".g2d")
