"""Super-resolution training data: random HR crops with LR patches made on the fly.

Design (one scale per batch, safe with worker processes):

* :class:`RandomScaleBatchSampler` yields, per batch, a list of ``(index, scale, sample_seed)``
  tuples that all share one scale drawn for that batch. The scale and every sample's seed come
  from ``(seed, epoch)`` only, so a run is reproducible whatever ``num_workers`` is.
* :meth:`CustomImageDataset.__getitem__` accepts such a tuple (or ``(index, scale)``, or a plain
  index, which uses :meth:`CustomImageDataset.set_scale`'s scale and torch's RNG).
* :func:`collate` stacks the samples (same HR size within a batch) and checks the scale agrees.

LR generation: the 8-bit HR crop (``round(patch_size * s)`` square) is shrunk to
``patch_size`` square with ``PIL.Image.resize(..., Image.BICUBIC, reducing_gap=None)``. Pillow's
bicubic (Keys a = -0.5) widens its kernel by the scale when downscaling, i.e. it is antialiased
like MATLAB ``imresize`` -- the convention of the SR benchmarks (DIV2K, Set5, ...). The two agree
closely but not bit-exactly (MATLAB's rounding/edge handling differ), so PSNRs of models trained
here and tested on MATLAB-made LR sets may differ slightly from published numbers.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from gsplat2d.image_files import IMAGE_EXTENSIONS, list_images
from gsplat2d.eval.metrics import load_image_uint8

__all__ = [
    "IMAGE_EXTENSIONS",
    "CustomImageDataset",
    "RandomScaleBatchSampler",
    "collate",
    "make_loader",
]



def _list_images(root: Path) -> list[Path]:
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder is not a directory: {root}")
    files = list_images(root, recursive=True)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in folder {root}")
    return files


def _check_whole(im: Image.Image) -> None:
    """Read all of an opened image's data, so a file cut after its header fails here: a PNG's
    chunks with their checksums (``verify``, no decoding), any other format decoded (a JPEG at
    1/8 size, which still reads every byte). The 540 images of ../shared/data/train: 0.4 s."""
    if im.format == "PNG":
        im.verify()
        return
    if im.format == "JPEG":
        im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
    im.load()


def _readable(files: list[Path], root: Path) -> list[Path]:
    """``files`` that pillow can read to the end (one ``UserWarning`` per file that it cannot);
    ``ValueError`` before any training when none is left."""
    good = []
    for p in files:
        try:
            with Image.open(p) as im:
                _check_whole(im)
        except Exception as e:  # pillow raises many types for foreign data
            warnings.warn(f"skipping unreadable image {p}: {type(e).__name__}: {e}", stacklevel=3)
            continue
        good.append(p)
    if not good:
        raise ValueError(f"no readable image in {root}: all {len(files)} image files failed to open")
    return good


def _pad_to(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Mirror-pad (``numpy`` ``symmetric``, works for any size >= 1) at the bottom/right."""
    ph, pw = max(0, h - arr.shape[0]), max(0, w - arr.shape[1])
    if ph or pw:
        arr = np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
    return arr


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, dtype=np.uint8, order="C")).permute(2, 0, 1).float().div_(255.0)


class CustomImageDataset(Dataset):
    """Random SR training crops from a folder of HR images (DIV2K_train_HR layout).

    Args:
        root: folder of HR images; ``.png/.jpg/.jpeg/.bmp`` (any case) are found recursively and
            sorted by path. Greyscale, RGBA, palette and 16-bit images are converted to 8-bit RGB.
        patch_size: LR patch side. The HR crop side is ``round(patch_size * s)``.
        scale_range: ``(min, max)`` scale; the batch sampler draws scales uniformly from it.
        augment: random horizontal flip, vertical flip and transpose (all 8 dihedral
            transforms), applied identically to HR and LR.
        lr_root: optional folder of pre-made LR images (DIV2K_train_LR_bicubic/X4 layout):
            ``<rel_dir>/0001x4.png`` pairs with HR ``<rel_dir>/0001.png`` (``0001.png`` is also
            accepted). Then ``lr_scale`` is required and is the only scale used; an LR patch is
            cropped at ``(y, x)`` and the HR crop at ``(round(y*s), round(x*s))``.
        lr_scale: the scale of the ``lr_root`` images (e.g. 4).

    Items: ``{"hr": [3, Hh, Hh], "lr": [3, patch_size, patch_size], "scale": float}``, float32 in
    ``[0, 1]``. Indexing takes ``(index, scale, sample_seed)``, ``(index, scale)`` or ``index``.

    Bad data: an unreadable or truncated file triggers one ``UserWarning`` naming it, is counted
    in ``self.skipped`` and never retried; a random other image is used instead. With worker
    processes each worker holds its own copy of ``skipped``/warnings (exact only for
    ``num_workers=0``). Images smaller than the crop are mirror-padded (bottom/right) up to the
    crop size -- no resampling, so the HR content keeps its true scale.

    Raises:
        FileNotFoundError: ``root``/``lr_root`` missing, or an HR image has no LR partner.
        ValueError: no images in ``root``, or invalid arguments.
    """

    def __init__(
        self,
        root: str | Path,
        patch_size: int = 48,
        scale_range: tuple[float, float] = (1.0, 4.0),
        augment: bool = True,
        lr_root: str | Path | None = None,
        lr_scale: float | None = None,
    ) -> None:
        if int(patch_size) != patch_size or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
        lo, hi = (float(v) for v in scale_range)
        if not (1.0 <= lo <= hi):
            raise ValueError(f"scale_range must satisfy 1 <= min <= max, got {scale_range!r}")
        self.root = Path(root)
        self.patch_size = int(patch_size)
        self.augment = bool(augment)
        self.files = _readable(_list_images(self.root), self.root)
        self.lr_root = Path(lr_root) if lr_root is not None else None
        self.lr_files: list[Path] | None = None
        if self.lr_root is not None:
            if lr_scale is None or float(lr_scale) < 1.0:
                raise ValueError(f"lr_root needs lr_scale >= 1, got {lr_scale!r}")
            self.lr_scale: float | None = float(lr_scale)
            lo = hi = self.lr_scale
            _list_images(self.lr_root)  # missing / empty folder errors
            self.lr_files = [self._lr_partner(p) for p in self.files]
        else:
            self.lr_scale = None
        self.scale_range = (lo, hi)
        self.scale = lo
        self.skipped = 0
        self._bad: set[int] = set()

    def _lr_partner(self, hr: Path) -> Path:
        rel = hr.relative_to(self.root)
        s = self.lr_scale
        tag = f"x{int(s)}" if s == int(s) else f"x{s:g}"
        for cand in (rel.with_name(f"{rel.stem}{tag}{rel.suffix}"), rel):
            if (self.lr_root / cand).is_file():
                return self.lr_root / cand
        raise FileNotFoundError(
            f"no LR image for {hr} in {self.lr_root} (looked for {rel.stem}{tag}{rel.suffix})"
        )

    def __len__(self) -> int:
        return len(self.files)

    def set_scale(self, s: float) -> None:
        """Scale used for plain integer indices (the batch sampler passes its own)."""
        self.scale = float(s)

    def hr_size(self, s: float) -> int:
        return int(round(self.patch_size * s))

    def __getitem__(self, item) -> dict:
        if isinstance(item, (tuple, list)):
            index, scale = int(item[0]), float(item[1])
            seed = int(item[2]) if len(item) > 2 else None
        else:
            index, scale, seed = int(item), self.scale, None
        if self.lr_scale is not None:
            scale = self.lr_scale
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        rng = np.random.default_rng(seed)
        n = len(self.files)
        for _ in range(n + 1):  # each failure marks one file bad, so this ends
            if index not in self._bad:
                try:
                    hr, lr = self._crop(index, scale, rng)
                    break
                except ValueError as e:
                    self._bad.add(index)
                    self.skipped += 1
                    warnings.warn(f"skipping unreadable image {self.files[index]}: {e}", stacklevel=2)
            good = [i for i in range(n) if i not in self._bad]
            if not good:
                raise RuntimeError(f"no readable image left in {self.root}")
            index = good[int(rng.integers(len(good)))]
        if self.augment:
            k = int(rng.integers(8))
            hr, lr = (self._dihedral(a, k) for a in (hr, lr))
        return {"hr": _to_tensor(hr), "lr": _to_tensor(lr), "scale": scale}

    @staticmethod
    def _dihedral(a: np.ndarray, k: int) -> np.ndarray:
        if k & 1:
            a = a[:, ::-1]
        if k & 2:
            a = a[::-1, :]
        if k & 4:
            a = a.transpose(1, 0, 2)
        return a

    def _crop(self, index: int, scale: float, rng: np.random.Generator):
        p = self.patch_size
        hs = self.hr_size(scale)
        img = load_image_uint8(self.files[index])
        if self.lr_files is None:
            img = _pad_to(img, hs, hs)
            y = int(rng.integers(img.shape[0] - hs + 1))
            x = int(rng.integers(img.shape[1] - hs + 1))
            hr = img[y : y + hs, x : x + hs]
            lr = np.asarray(
                Image.fromarray(np.ascontiguousarray(hr)).resize((p, p), Image.BICUBIC, reducing_gap=None)
            )
            return hr, lr
        lr_img = load_image_uint8(self.lr_files[index])
        lr_img = _pad_to(lr_img, p, p)
        # HR must cover the scaled LR grid; mirror-pad it if it is smaller (small LR case).
        img = _pad_to(img, hs + int(math.ceil((lr_img.shape[0] - p) * scale)),
                      hs + int(math.ceil((lr_img.shape[1] - p) * scale)))
        ymax = min(lr_img.shape[0] - p, int((img.shape[0] - hs) / scale))
        xmax = min(lr_img.shape[1] - p, int((img.shape[1] - hs) / scale))
        y, x = int(rng.integers(ymax + 1)), int(rng.integers(xmax + 1))
        hy, hx = int(round(y * scale)), int(round(x * scale))
        return img[hy : hy + hs, hx : hx + hs], lr_img[y : y + p, x : x + p]


class RandomScaleBatchSampler(Sampler):
    """Batches of ``(index, scale, sample_seed)`` tuples, one scale per batch.

    The scale of each batch is uniform in ``dataset.scale_range`` (or drawn from ``scales`` if
    given). Everything is a function of ``(seed, epoch)``; the epoch advances by one after each
    full iteration, or is set with :meth:`set_epoch`.
    """

    def __init__(
        self,
        dataset: CustomImageDataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        scales: Sequence[float] | None = None,
        repeat: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        if not (0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.n = len(dataset) * int(repeat)
        self.n_images = len(dataset)
        self.rank, self.world_size = int(rank), int(world_size)
        self.scale_range = tuple(dataset.scale_range)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.scales = None if scales is None else [float(s) for s in scales]
        if getattr(dataset, "lr_scale", None) is not None:
            self.scales = [dataset.lr_scale]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _num_batches(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __len__(self) -> int:
        # Every rank gets the same number of batches (DDP needs matching step counts).
        return self._num_batches() // self.world_size if self.world_size > 1 else self._num_batches()

    def __iter__(self) -> Iterator[list[tuple[int, float, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        order = order % self.n_images  # ``repeat`` passes over the images per epoch
        usable = len(self) * self.world_size
        for b in range(self._num_batches()):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.scales is not None:
                s = self.scales[int(rng.integers(len(self.scales)))]
            else:
                s = float(rng.uniform(*self.scale_range))
            seeds = rng.integers(0, 2**62, size=len(idx))
            # All ranks draw the same stream and keep every world_size-th batch: disjoint shards.
            if b < usable and b % self.world_size == self.rank:
                yield [(int(i), s, int(q)) for i, q in zip(idx, seeds)]


def collate(samples: list[dict]) -> dict:
    """Stack samples made at one scale: ``hr [B,3,Hh,Hh]``, ``lr [B,3,p,p]``, ``scale`` float."""
    scales = {float(s["scale"]) for s in samples}
    if len(scales) != 1:
        raise ValueError(f"a batch must have one scale, got {sorted(scales)}")
    return {
        "hr": torch.stack([s["hr"] for s in samples]),
        "lr": torch.stack([s["lr"] for s in samples]),
        "scale": scales.pop(),
    }


def make_loader(
    dataset: CustomImageDataset,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    repeat: int = 1,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """DataLoader with one scale per batch (:class:`RandomScaleBatchSampler` + :func:`collate`),
    pinned memory when CUDA is available, persistent workers when ``num_workers > 0``.
    Reproducible from ``seed`` independently of ``num_workers``. ``repeat`` passes over the
    images make one epoch; ``rank``/``world_size`` shard the batches for DDP."""
    sampler = RandomScaleBatchSampler(
        dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, repeat=repeat, rank=rank,
        world_size=world_size,
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
