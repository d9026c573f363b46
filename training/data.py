"""Torch datasets: the procedural renderer on the fly, and real data in its usual layouts.

Every dataset returns a dict of tensors (docs/INTERFACES.md):
  "image"   float32 [3, H, W] in [-1, 1]     "mask"  float32 [1, H, W] in {0, 1}
  "healthy" float32 [3, H, W] in [-1, 1]     "hand"  float32 [1, H, W] in {0, 1}
  "label"   int64 scalar (index into .classes)  "name" str

Folder datasets scan their files when constructed -- names, pairing, readability of the headers,
sizes -- so bad data fails before training starts, with a `DataError` that names the file and
the problem. Layouts:
  PairedFolder  the paper's: image/NAME_image.png, patho/NAME_patho.png, optional healthy/, hand/
  ClassFolder   ISIC-style class folders: ROOT/<CLASS>/*.jpg (or ROOT/train/<CLASS>/)
  Ham10000      the HAM10000 metadata CSV (image_id, dx) plus its image folders
  ImageFolder   one folder of images, one unpaired domain (CycleGAN)
`size` (int or (H, W)) resizes every image (bicubic) and mask (nearest); with size=None all the
images of a data set must share one size.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .synth import render
from .synth.lesion import CLASSES as LESION_CLASSES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class DataError(ValueError):
    """A data set on disk is unusable; the message names the file and the problem."""


def _size2(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def to_image_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float() / 127.5 - 1.0


def to_mask_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) (0 / 255, or any: > 127 counts as set) -> float32 (1, H, W) in {0, 1}."""
    return torch.from_numpy((arr > 127).astype(np.float32))[None]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from e


class _SameSize:
    """Without a target size every image must have the first image's size, or batching fails
    later with a cryptic collate error; say so at scan time instead."""

    def __init__(self, size: tuple[int, int] | None) -> None:
        self.resizing = size is not None
        self.first: tuple[Path, tuple[int, int]] | None = None

    def check(self, path: Path) -> tuple[int, int]:
        wh = _header_size(path)
        if self.resizing:
            return wh
        if self.first is None:
            self.first = (path, wh)
        elif wh != self.first[1]:
            raise DataError(f"{path}: size {wh} differs from {self.first[0].name} {self.first[1]}; "
                            f"pass size= to resize every image to one size")
        return wh


def _load(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            img = im.convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                # Masks keep their two values; images get a smooth resampling.
                resample = Image.Resampling.NEAREST if mode == "L" else Image.Resampling.BICUBIC
                img = img.resize((size[1], size[0]), resample)
            return np.asarray(img)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from e


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{path}: no such folder ({what})")


class SynthDataset(Dataset):
    """Renders sample i on the fly as `render(kind, seed + i, size, **params)`.

    kind: "eczema" | "hand" | "lesion", or a sequence of kinds for a multi-kind generator (sample i
    is of kind kinds[i % len(kinds)], label = kind index, and only "image", "label", "name" are
    returned since the kinds carry different extras). Single kind: lesion labels index the lesion
    classes (NV, MEL); eczema / hand have the one class of their kind.
    """

    def __init__(self, kind: str | Sequence[str], size: int | Sequence[int] = 128, length: int = 10000,
                 seed: int = 0, **params: Any) -> None:
        self.kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        if not self.kinds:
            raise ValueError("SynthDataset needs at least one kind")
        self.size: tuple[int, int] = _size2(size) or (128, 128)
        self.length = int(length)
        self.seed = int(seed)
        self.params = params
        render(self.kinds[0], self.seed, (16, 16), **params)  # validate kind and params now
        if len(self.kinds) > 1:
            self.classes = self.kinds
        elif self.kinds[0] == "lesion":
            self.classes = LESION_CLASSES
        else:
            self.classes = self.kinds

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        kind = self.kinds[i % len(self.kinds)]
        s = render(kind, self.seed + i, self.size, **self.params)
        out: dict[str, Any] = {"image": to_image_tensor(s.image), "name": f"{kind}_{self.seed + i:08d}"}
        if len(self.kinds) > 1:
            out["label"] = torch.tensor(self.kinds.index(kind), dtype=torch.int64)
            return out
        out["label"] = torch.tensor(self.classes.index(s.label) if kind == "lesion" else 0, dtype=torch.int64)
        if s.mask is not None:
            out["mask"] = to_mask_tensor(s.mask)
        if s.healthy is not None:
            out["healthy"] = to_image_tensor(s.healthy)
        if s.hand is not None:
            out["hand"] = to_mask_tensor(s.hand)
        return out


class PairedFolder(Dataset):
    """The paper's layout: root/image/NAME_image.png with root/patho/NAME_patho.png (255 =
    eczema); optional root/healthy/NAME_image.png and root/hand/NAME_hand.png. Files pair by
    NAME; other image extensions work too. Every image needs its mask (and its healthy / hand
    image where those folders exist), of the same size."""

    SUFFIX = {"patho": "_patho", "healthy": "_image", "hand": "_hand"}

    def __init__(self, root: str | Path, size: int | Sequence[int] | None = None) -> None:
        self.root = Path(root)
        self.size = _size2(size)
        _require_dir(self.root / "image", "the paper layout needs image/ and patho/")
        _require_dir(self.root / "patho", "the paper layout needs image/ and patho/")
        images = _images_in(self.root / "image")
        if not images:
            raise DataError(f"{self.root / 'image'}: empty folder (no {'/'.join(IMAGE_SUFFIXES)} images)")
        extras = {k: _index(self.root / k, suffix) for k, suffix in self.SUFFIX.items() if (self.root / k).is_dir()}
        self.items: list[tuple[str, dict[str, Path]]] = []  # (name, {"image": ..., "patho": ..., ...})
        same = _SameSize(self.size)
        for path in images:
            name = path.stem[: -len("_image")] if path.stem.endswith("_image") else path.stem
            size_img = same.check(path)
            item: dict[str, Path] = {"image": path}
            for key, index in extras.items():
                other = index.get(name)
                if other is None:
                    raise DataError(f"{path}: no {key} file for it (expected {self.root / key / (name + self.SUFFIX[key])}.png)")
                if _header_size(other) != size_img:
                    raise DataError(f"{other}: size {_header_size(other)} differs from its image {path.name} {size_img}")
                item[key] = other
            self.items.append((name, item))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name, item = self.items[i]
        out: dict[str, Any] = {"image": to_image_tensor(_load(item["image"], "RGB", self.size)), "name": name}
        out["mask"] = to_mask_tensor(_load(item["patho"], "L", self.size))
        if "healthy" in item:
            out["healthy"] = to_image_tensor(_load(item["healthy"], "RGB", self.size))
        if "hand" in item:
            out["hand"] = to_mask_tensor(_load(item["hand"], "L", self.size))
        return out


def _index(folder: Path, suffix: str) -> dict[str, Path]:
    """NAME -> file for NAME{suffix}.ext (or NAME.ext) in folder."""
    out: dict[str, Path] = {}
    for p in _images_in(folder):
        out[p.stem[: -len(suffix)] if p.stem.endswith(suffix) else p.stem] = p
    return out


class _LabelledImages(Dataset):
    """Images with a class index each: `self.items` holds (path, class index); `self.size` resizes."""

    items: list[tuple[Path, int]]
    size: int | Sequence[int] | None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, k = self.items[i]
        return {"image": to_image_tensor(_load(path, "RGB", self.size)), "label": torch.tensor(k, dtype=torch.int64),
                "name": path.stem}


class ClassFolder(_LabelledImages):
    """ISIC-style class folders: root/<CLASS>/*.png|jpg (or root/train/<CLASS>/ when root has a
    train/ folder, as `dermagan synth --kind lesion` writes). .classes: sorted folder names."""

    def __init__(self, root: str | Path, size: int | Sequence[int] | None = None) -> None:
        root = Path(root)
        _require_dir(root, "class folders")
        self.root = root / "train" if (root / "train").is_dir() else root
        self.size = _size2(size)
        dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not dirs:
            raise DataError(f"{self.root}: empty folder (expected one sub-folder of images per class)")
        self.classes = tuple(p.name for p in dirs)
        self.items: list[tuple[Path, int]] = []
        same = _SameSize(self.size)
        for k, d in enumerate(dirs):
            files = _images_in(d)
            if not files:
                raise DataError(f"{d}: empty folder (class {d.name!r} has no images)")
            for f in files:
                same.check(f)
                self.items.append((f, k))


class Ham10000(_LabelledImages):
    """HAM10000: a metadata CSV with columns image_id and dx, and the images (IMAGE_ID.jpg)
    anywhere below root (the release splits them over two folders). .classes: the sorted dx
    values, upper-cased to match the ISIC folder names (NV, MEL, ...)."""

    REQUIRED = ("image_id", "dx")

    def __init__(self, root: str | Path, csv_path: str | Path, size: int | Sequence[int] | None = None) -> None:
        self.root = Path(root)
        self.csv = Path(csv_path)
        self.size = _size2(size)
        _require_dir(self.root, "HAM10000 images")
        if not self.csv.is_file():
            raise DataError(f"{self.csv}: no such file (HAM10000 metadata CSV)")
        files = {p.stem: p for p in sorted(self.root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}
        try:
            with self.csv.open(newline="") as fh:
                reader = csv.DictReader(fh)
                columns = reader.fieldnames or []
                missing = [c for c in self.REQUIRED if c not in columns]
                if missing:
                    raise DataError(f"{self.csv}: unknown CSV columns {columns}; needs {', '.join(self.REQUIRED)} "
                                    f"(missing {', '.join(missing)})")
                rows = [(n + 2, r["image_id"], (r["dx"] or "").strip()) for n, r in enumerate(reader)]
        except UnicodeDecodeError as e:
            raise DataError(f"{self.csv}: not a text CSV ({e})") from e
        if not rows:
            raise DataError(f"{self.csv}: no rows")
        self.classes = tuple(sorted({dx.upper() for _, _, dx in rows}))
        self.items: list[tuple[Path, int]] = []
        same = _SameSize(self.size)
        for line, image_id, dx in rows:
            if not dx:
                raise DataError(f"{self.csv}: line {line}: empty dx for {image_id!r}")
            path = files.get(image_id)
            if path is None:
                raise DataError(f"{self.csv}: line {line}: image {image_id!r} not found under {self.root}")
            same.check(path)
            self.items.append((path, self.classes.index(dx.upper())))


class ImageFolder(Dataset):
    """One folder of images (one unpaired domain, e.g. for CycleGAN); names are the file stems."""

    def __init__(self, root: str | Path, size: int | Sequence[int] | None = None) -> None:
        self.root = Path(root)
        self.size = _size2(size)
        _require_dir(self.root, "a folder of images")
        self.items = _images_in(self.root)
        if not self.items:
            raise DataError(f"{self.root}: empty folder (no {'/'.join(IMAGE_SUFFIXES)} images)")
        same = _SameSize(self.size)
        for p in self.items:
            same.check(p)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.items[i]
        return {"image": to_image_tensor(_load(path, "RGB", self.size)), "name": path.stem}
