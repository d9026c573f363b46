"""Torch datasets: the procedural renderer on the fly, and real data in its usual layouts.

Every dataset returns a dict of tensors (docs/INTERFACES.md):
  "image"   float32 [3, H, W] in [-1, 1]     "mask"  float32 [1, H, W] in {0, 1}
  "healthy" float32 [3, H, W] in [-1, 1]     "hand"  float32 [1, H, W] in {0, 1}
  "label"   int64 scalar (index into .classes)  "name" str

Folder datasets scan their files when constructed -- names, pairing, readability of the headers,
sizes -- so bad data fails before training starts, with a `DataError` that names the file and
the problem. Layouts:
  PairedFolder  the paper's: image/NAME_image.png, patho/NAME_patho.png, optional healthy/, hand/
  UnpairedFolder the same folders without exact pairs: eczema = non-empty masks, healthy = empty
                masks + healthy/ (any names); add/remove --unpaired and the CycleGAN
  ClassFolder   ISIC-style class folders: ROOT/<CLASS>/*.jpg (or ROOT/train/<CLASS>/)
  LabelCsv      a labels CSV plus its image folders: HAM10000's metadata (image_id, dx) or the
                ISIC challenges' one-hot ground truth (image, MEL, NV, ...)
  ImageFolder   one folder of images, one unpaired domain (CycleGAN)
`size` (int or (H, W)) resizes every image (bicubic) and mask (nearest); with size=None all the
images of a data set must share one size. `fit` says how an image of another shape than `size` gets
there: "squash" (the reference pix2pix / CycleGAN loaders' resize) or "crop" (the largest centred window
of size's shape, then resized: shapes keep their proportions). The default, "", squashes and logs a
warning when that distorts images (the count, an example and the options: `--fit crop`, `--patches`,
`--fit squash`). Patches (`patches_from`) always keep the proportions.

Masks (patho/, hand/) are read by one rule, `MASK_RULE` (`_mask_bits`): 0/255 white-on-black masks as they are,
0/1 label maps and coloured strokes as marked wherever they are not black, transparent overlays by their
alpha. 16-bit grey images are brought to 8 bits as the service does (value >> 8), not clipped to white.
"""

from __future__ import annotations

import csv
import logging
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from dermagan.colour import is_wide, to_eight_bits, to_srgb
from dermagan.formats import HEIF
from dermagan.masks import MASK_RULE, mark

from .synth import render
from .synth.lesion import CLASSES as LESION_CLASSES

log = logging.getLogger("dermagan.training")

#: how an image of another shape than the data set's size gets there (see the module docstring; "" = squash, warned)
FITS = ("", "squash", "crop")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff") + ((".heic", ".heif") if HEIF else ())


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


def _mask_bits(img: Image.Image) -> np.ndarray:
    """bool (H, W): where a decoded mask marks eczema (or the hand), by `MASK_RULE` (dermagan/masks.py, the
    service's rule too). A 0/255 mask reads as `> 127` (bitwise as before; the renderer's masks and the models
    trained on them rely on it)."""
    if img.mode == "P":  # palette: the colours (and transparency) it shows
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    alpha = None
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
    if is_wide(img):
        return mark(np.asarray(img), alpha, half=32767)
    if img.mode == "L":
        return mark(np.asarray(img), alpha)
    # RGB, CMYK, 1, RGBA / LA, ...: the brightest channel (red strokes count as 255, not grey 76)
    return mark(np.asarray(img.convert("RGB")).max(axis=2), alpha)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


#: What Pillow raises for a file it cannot read (a damaged chunk can fail in its parser: struct.error).
_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error)

#: EXIF orientations that turn the stored image by 90 degrees (width and height swap when shown).
_QUARTER_TURNS = (5, 6, 7, 8)


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 = as stored) from the header; a PNG whose header has no EXIF counts as 1
    (Pillow would decode the whole file to look for an eXIf chunk after the pixels)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    return int(im.getexif().get(0x0112, 1) or 1)


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) as shown -- EXIF orientation applied, as the service and annotation tools show a
    photograph -- from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            return (h, w) if _orientation(im) in _QUARTER_TURNS else (w, h)
    except _UNREADABLE as e:
        raise DataError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from e


class _SameSize:
    """Without a target size every image must have the first image's size, or batching fails
    later with a cryptic collate error; say so at scan time instead. With one, count the images that
    `fit="squash"` distorts (another shape than the size's, by more than 2 %): `warn` tells the user."""

    def __init__(self, size: tuple[int, int] | None, fit: str = "", *, patches: bool = False) -> None:
        if fit not in FITS:
            raise DataError(f"fit must be squash or crop, got {fit!r}")
        self.size, self.squashing = size, size is not None and fit == "" and not patches
        self.first: tuple[Path, tuple[int, int]] | None = None
        self.checked, self.squashed, self.example = 0, 0, ""

    def check(self, path: Path) -> tuple[int, int]:
        wh = _header_size(path)
        self.checked += 1
        if self.size is not None:
            (w, h), (th, tw) = wh, self.size
            if self.squashing and abs(w * th - h * tw) > 0.02 * h * tw:
                self.squashed += 1
                self.example = self.example or f"{path.name}, {w}x{h}"
            return wh
        if self.first is None:
            self.first = (path, wh)
        elif wh != self.first[1]:
            raise DataError(f"{path}: size {wh} differs from {self.first[0].name} {self.first[1]}; "
                            f"pass size= to resize every image to one size")
        return wh

    def warn(self, where: Path) -> None:
        """Log what squashing does to these images, once a data set is scanned."""
        if self.squashed and self.size is not None:
            log.warning("dermagan: warning: %d of the %d images of %s are not of the %dx%d shape (e.g. %s); they "
                        "are squashed to %dx%d, which distorts what they show. Pass --fit crop to take the largest "
                        "centred %dx%d window instead, or --patches SHORT_PX (add/remove/cycle/segment) to cut "
                        "patches, as the paper did; --fit squash keeps this and silences the warning",
                        self.squashed, self.checked, where, self.size[1], self.size[0], self.example,
                        self.size[1], self.size[0], self.size[1], self.size[0])


def _load(path: Path, mode: str, size: tuple[int, int] | None, *, draft: bool = False,
          fit: str = "") -> np.ndarray:
    """The image as shown (EXIF orientation applied; in sRGB, as the service decodes it: an embedded
    Display P3 or other profile is converted), in `mode`, brought to `size` (H, W) if given: resized
    ("squash") or its largest centred window of size's shape resized ("crop").
    mode "RGB": uint8 (H, W, 3), 16-bit grey scaled to 8 bits; "mask": uint8 (H, W) in {0, 255}, read by
    `MASK_RULE` at the file's own size and depth (then resized, nearest: the two values stay).
    draft: let a JPEG decode at a reduced scale (1/2, 1/4, 1/8) that is still at least `size` -- a
    12-megapixel photograph cut into patches at 480 px need not be decoded whole for every patch."""
    try:
        with Image.open(path) as im:
            orientation = _orientation(im)
            if draft and size is not None:
                turned = orientation in _QUARTER_TURNS
                im.draft(None, (size[0], size[1]) if turned else (size[1], size[0]))
            img = ImageOps.exif_transpose(im) if orientation != 1 else im
            if mode == "mask":
                img = Image.fromarray(_mask_bits(img).astype(np.uint8) * 255)
            else:
                img = to_srgb(img) if mode == "RGB" else img  # colours as the service decodes them
                img = (to_eight_bits(img) if is_wide(img) else img).convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                # Masks keep their two values; images get a smooth resampling.
                resample = Image.Resampling.NEAREST if mode == "mask" else Image.Resampling.BICUBIC
                img = (ImageOps.fit(img, (size[1], size[0]), resample) if fit == "crop"
                       else img.resize((size[1], size[0]), resample))
            return np.asarray(img)
    except _UNREADABLE as e:
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


#: A patch: the image resized to (h, w), the window at (top, left) of the dataset's size.
Window = tuple[tuple[int, int], int, int]


def _window_starts(n: int, size: int, stride: int) -> list[int]:
    """Starts of `size`-long windows over [0, n) every `stride`, the last flush with the end."""
    if n <= size:
        return [0]
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:
        starts.append(n - size)
    return starts


class _Patches:
    """Cuts images into size x size patches at a stride of size / 2 (the paper: 128 px patches of its 640x480
    hand photographs, 50 % overlap), after resizing each image so that its shorter side is `short` px."""

    def __init__(self, size: tuple[int, int] | None, short: int) -> None:
        if size is None or size[0] != size[1] or short < size[0]:
            raise DataError(f"patches need a square size at most the shorter side they are cut from "
                            f"(size {size}, shorter side {short})")
        self.size, self.short = size[0], short

    def scaled(self, wh: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of an image of (w, h) with its shorter side at `short`."""
        w, h = wh
        k = self.short / min(w, h)
        return max(round(h * k), self.size), max(round(w * k), self.size)

    def windows(self, hw: tuple[int, int]) -> list[Window]:
        s = self.size
        return [(hw, y, x) for y in _window_starts(hw[0], s, s // 2) for x in _window_starts(hw[1], s, s // 2)]

    def mask(self, path: Path, hw: tuple[int, int]) -> np.ndarray:
        """bool (h, w): the mask at the patches' scale."""
        return _load(path, "mask", hw) > 127

    def on_hand(self, hand: np.ndarray | None, window: Window) -> bool:
        """At least half of the patch on the hand (background is not skin); True without hand masks."""
        _, y, x = window
        return hand is None or hand[y:y + self.size, x:x + self.size].mean() >= 0.5

    def has(self, mask: np.ndarray, window: Window) -> bool:
        """Whether the patch holds any of `mask`."""
        _, y, x = window
        return bool(mask[y:y + self.size, x:x + self.size].any())

    @staticmethod
    def named(name: str, window: Window) -> str:
        return f"{name}@{window[1]},{window[2]}"


def _read(path: Path, mode: str, size: tuple[int, int] | None, window: Window | None, fit: str = "") -> np.ndarray:
    """The whole image at `size` (brought there as `fit` says), or one patch of it."""
    if window is None:
        return _load(path, mode, size, fit=fit)
    hw, y, x = window
    assert size is not None
    return _load(path, mode, hw, draft=True)[y:y + size[0], x:x + size[1]]


class PairedFolder(Dataset):
    """The paper's layout: root/image/NAME_image.png with root/patho/NAME_patho.png (255 =
    eczema; masks are read by `MASK_RULE`); optional root/healthy/NAME_image.png and root/hand/NAME_hand.png.
    Files pair by NAME; other image extensions work too. Every image needs its mask (and its healthy / hand
    image where those folders exist), of the same size, and at least one mask must mark eczema (checked
    when constructed: masks are decoded until one does, usually the first; all of them only when none does).

    patches_from > 0: every sample is a size x size patch instead of a whole image -- each image is
    resized so that its shorter side is `patches_from` px and cut into patches at half their size's
    stride, as the paper cut its hand photographs. With a hand/ folder, only patches at least half on
    the hand are kept (background is not skin)."""

    SUFFIX = {"patho": "_patho", "healthy": "_image", "hand": "_hand"}

    def __init__(self, root: str | Path, size: int | Sequence[int] | None = None, patches_from: int = 0,
                 fit: str = "") -> None:
        self.root = Path(root)
        self.size, self.fit = _size2(size), fit
        extras = [k for k in self.SUFFIX if k == "patho" or (self.root / k).is_dir()]
        same = _SameSize(self.size, fit, patches=bool(patches_from))
        items = _scan_paper_layout(self.root, extras, same)
        same.warn(self.root / "image")
        _require_eczema(self.root, [item["patho"] for _, item in items])
        self.items: list[tuple[str, dict[str, Path], Window | None]] = []
        if not patches_from:
            self.items = [(name, item, None) for name, item in items]
            return
        cut = _Patches(self.size, patches_from)
        for name, item in items:
            hw = cut.scaled(_header_size(item["image"]))
            hand = cut.mask(item["hand"], hw) if "hand" in item else None
            self.items += [(cut.named(name, w), item, w) for w in cut.windows(hw) if cut.on_hand(hand, w)]
        if not self.items:
            raise DataError(f"{self.root}: no patch of {cut.size} px is at least half on a hand (hand/ masks)")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name, item, window = self.items[i]
        size, fit = self.size, self.fit
        out: dict[str, Any] = {"image": to_image_tensor(_read(item["image"], "RGB", size, window, fit)), "name": name}
        out["mask"] = to_mask_tensor(_read(item["patho"], "mask", size, window, fit))
        if "healthy" in item:
            out["healthy"] = to_image_tensor(_read(item["healthy"], "RGB", size, window, fit))
        if "hand" in item:
            out["hand"] = to_mask_tensor(_read(item["hand"], "mask", size, window, fit))
        return out


class UnpairedFolder(Dataset):
    """The paper's layout as real photographs fill it: no image exists with and without its eczema, so
    the two domains are separate pools. Eczema: root/image/ files whose patho mask marks any pixel
    (`MASK_RULE`); healthy skin: root/image/ files whose mask is empty (the paper's healthy patches) and every
    file of an optional root/healthy/ folder, whatever its name. Sample i joins eczema[i mod E] (its
    "image" and "mask") with healthy[i mod H] ("healthy"); its length is max(E, H), so every file of the
    larger pool is seen once an epoch. For add / remove trained without exact pairs, and the CycleGAN.

    patches_from > 0: the pools hold patches (PairedFolder's), a patch with eczema in its mask in the
    eczema pool and one without in the healthy pool -- the paper's 2,872 eczema and 51,023 healthy
    patches came so from its hand photographs. With a hand/ folder, healthy patches must be at least
    half on the hand.

    Sorting the files into the pools decodes every mask once, when constructed."""

    def __init__(self, root: str | Path, size: int | Sequence[int] | None = None, patches_from: int = 0,
                 fit: str = "") -> None:
        self.root = Path(root)
        self.size, self.fit = _size2(size), fit
        same = _SameSize(self.size, fit, patches=bool(patches_from))
        cut = _Patches(self.size, patches_from) if patches_from else None
        self.eczema: list[tuple[str, Path, Path, Window | None]] = []  # (name, image, mask, patch)
        self.healthy: list[tuple[str, Path, Window | None]] = []
        keys = ["patho", "hand"] if cut is not None and (self.root / "hand").is_dir() else ["patho"]
        for name, item in _scan_paper_layout(self.root, keys, same):
            if cut is None:
                if _load(item["patho"], "mask", None).any():
                    self.eczema.append((name, item["image"], item["patho"], None))
                else:
                    self.healthy.append((name, item["image"], None))
                continue
            hw = cut.scaled(_header_size(item["image"]))
            mask = cut.mask(item["patho"], hw)
            hand = cut.mask(item["hand"], hw) if "hand" in item else None
            for window in cut.windows(hw):
                if cut.has(mask, window):
                    self.eczema.append((cut.named(name, window), item["image"], item["patho"], window))
                elif cut.on_hand(hand, window):
                    self.healthy.append((cut.named(name, window), item["image"], window))
        if (self.root / "healthy").is_dir():
            for path in _images_in(self.root / "healthy"):
                wh = same.check(path)
                if cut is None:
                    self.healthy.append((path.stem, path, None))
                else:
                    self.healthy += [(cut.named(path.stem, w), path, w) for w in cut.windows(cut.scaled(wh))]
        same.warn(self.root)
        if not self.eczema:
            raise _no_eczema(self.root)
        if not self.healthy:
            raise DataError(f"{self.root}: no healthy skin: every mask in patho/ marks eczema "
                            + ("in every patch " if cut is not None else "")
                            + "and there is no healthy/ folder (add images of healthy skin with an all-black mask, "
                            "or a healthy/ folder)")

    def __len__(self) -> int:
        return max(len(self.eczema), len(self.healthy))

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        eczema = self.load_eczema(i % len(self.eczema))
        healthy_name = self.healthy[i % len(self.healthy)][0]
        return {**eczema, "healthy": self.load_healthy(i % len(self.healthy)), "name": f"{eczema['name']}+{healthy_name}"}

    def load_eczema(self, j: int) -> dict[str, Any]:
        """Eczema pool item j: {"image", "mask", "name"}."""
        name, image, mask, window = self.eczema[j]
        return {"image": to_image_tensor(_read(image, "RGB", self.size, window, self.fit)),
                "mask": to_mask_tensor(_read(mask, "mask", self.size, window, self.fit)), "name": name}

    def load_healthy(self, j: int) -> torch.Tensor:
        """Healthy pool item j: the image [3, H, W]."""
        _, path, window = self.healthy[j]
        return to_image_tensor(_read(path, "RGB", self.size, window, self.fit))


def _no_eczema(root: Path) -> DataError:
    return DataError(f"{root / 'patho'}: every mask is empty, so there is no eczema to learn from; the masks are "
                     f"read so: {MASK_RULE}")


def _require_eczema(root: Path, masks: Sequence[Path]) -> None:
    """DataError unless one of `masks` marks a pixel. Masks are decoded in a fixed shuffled order until one
    does: one decode when most images have eczema, a few when healthy images cluster under some names."""
    for k in np.random.default_rng(0).permutation(len(masks)):
        if _load(masks[k], "mask", None).any():
            return
    raise _no_eczema(root)


def _scan_paper_layout(root: Path, keys: Sequence[str], same: _SameSize) -> list[tuple[str, dict[str, Path]]]:
    """(NAME, {"image": path, key: path, ...}) for every root/image/ file, each paired by NAME with a file
    of the same size in every folder of `keys` (of PairedFolder.SUFFIX); DataError names what is missing."""
    _require_dir(root / "image", "the paper layout needs image/ and patho/")
    _require_dir(root / "patho", "the paper layout needs image/ and patho/")
    images = _images_in(root / "image")
    if not images:
        raise DataError(f"{root / 'image'}: empty folder (no {'/'.join(IMAGE_SUFFIXES)} images)")
    suffix = PairedFolder.SUFFIX
    extras = {k: _index(root / k, suffix[k]) for k in keys}
    for key, index in extras.items():  # every image without its file named at once, not one per try
        missing = [p for p in images if _paper_name(p) not in index]
        if missing:
            name = _paper_name(missing[0])
            listed = ", ".join(p.name for p in missing[:6]) + (", ..." if len(missing) > 6 else "")
            more = f"; {len(missing)} of the {len(images)} images have none: {listed}" if len(missing) > 1 else ""
            raise DataError(f"{missing[0]}: no {key} file for it (expected {root / key / (name + suffix[key])}.png, or "
                            f"{name}.png; any image extension){more}")
    items = []
    for path in images:
        name = _paper_name(path)
        size_img = same.check(path)
        item: dict[str, Path] = {"image": path}
        for key, index in extras.items():
            other = index[name]
            if _header_size(other) != size_img:
                raise DataError(f"{other}: size {_header_size(other)} differs from its image {path.name} {size_img}")
            item[key] = other
        items.append((name, item))
    return items


def _paper_name(image: Path) -> str:
    """NAME of image/NAME_image.ext (or image/NAME.ext)."""
    return image.stem[: -len("_image")] if image.stem.endswith("_image") else image.stem


def _index(folder: Path, suffix: str) -> dict[str, Path]:
    """NAME -> file for NAME{suffix}.ext (or NAME.ext) in folder."""
    out: dict[str, Path] = {}
    for p in _images_in(folder):
        out[p.stem[: -len(suffix)] if p.stem.endswith(suffix) else p.stem] = p
    return out


class _LabelledImages(Dataset):
    """Images with a class index each: `self.items` holds (path, class index); `self.size` resizes."""

    items: list[tuple[Path, int]]
    size: tuple[int, int] | None
    fit: str

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, k = self.items[i]
        return {"image": to_image_tensor(_load(path, "RGB", self.size, fit=self.fit)),
                "label": torch.tensor(k, dtype=torch.int64), "name": path.stem}


class ClassFolder(_LabelledImages):
    """ISIC-style class folders: root/<CLASS>/*.png|jpg (or root/train/<CLASS>/ when root has a
    train/ folder, as `dermagan synth --kind lesion` writes). .classes: sorted folder names."""

    def __init__(self, root: str | Path, size: int | Sequence[int] | None = None, fit: str = "") -> None:
        root = Path(root)
        _require_dir(root, "class folders")
        self.root = root / "train" if (root / "train").is_dir() else root
        self.size, self.fit = _size2(size), fit
        dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not dirs:
            raise DataError(f"{self.root}: empty folder (expected one sub-folder of images per class)")
        self.classes = tuple(p.name for p in dirs)
        self.items: list[tuple[Path, int]] = []
        same = _SameSize(self.size, fit)
        for k, d in enumerate(dirs):
            files = _images_in(d)
            if not files:
                raise DataError(f"{d}: empty folder (class {d.name!r} has no images)")
            for f in files:
                same.check(f)
                self.items.append((f, k))
        same.warn(self.root)


class LabelCsv(_LabelledImages):
    """A labels CSV plus its images (IMAGE_ID.jpg etc.) anywhere below root. Two formats:
    HAM10000's metadata (columns image_id and dx: one class name a row) and the ISIC challenges'
    ground truth (2018 task 3, 2019: column image plus one 0/1 column per class, one 1 a row).
    .classes: the sorted class names, upper-cased to match the ISIC folder names (NV, MEL, ...);
    ISIC columns that no row sets (2019's UNK) are not classes."""

    def __init__(self, root: str | Path, csv_path: str | Path, size: int | Sequence[int] | None = None,
                 fit: str = "") -> None:
        self.root = Path(root)
        self.csv = Path(csv_path)
        self.size, self.fit = _size2(size), fit
        _require_dir(self.root, "the images of the labels CSV")
        if not self.csv.is_file():
            raise DataError(f"{self.csv}: no such file (labels CSV)")
        columns, rows = _read_csv(self.csv)
        fmt = _csv_format(columns, rows)
        if fmt is None:
            raise DataError(f"{self.csv}: unknown CSV columns {columns}; needs image_id and dx (HAM10000) or image "
                            f"and one 0/1 column per class (ISIC ground truth)")
        if not rows:
            raise DataError(f"{self.csv}: no rows")
        labelled = [(n + 2, image_id, label) for n, (image_id, label) in enumerate(_csv_labels(self.csv, fmt, columns, rows))]
        self.classes = tuple(sorted({label.upper() for _, _, label in labelled if label}))
        files = {p.stem: p for p in sorted(self.root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}
        self.items: list[tuple[Path, int]] = []
        same = _SameSize(self.size, fit)
        for line, image_id, label in labelled:
            if not label:
                raise DataError(f"{self.csv}: line {line}: no class for {image_id!r}"
                                + (" (empty dx)" if fmt == "ham" else " (no class column is 1)"))
            path = files.get(image_id)
            if path is None:
                raise DataError(f"{self.csv}: line {line}: image {image_id!r} not found under {self.root}")
            same.check(path)
            self.items.append((path, self.classes.index(label.upper())))
        same.warn(self.root)


_ONE_HOT = {"0", "1", "0.0", "1.0"}


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            return list(reader.fieldnames or []), list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a text CSV ({e})") from e


def _csv_format(columns: list[str], rows: list[dict[str, str]]) -> str | None:
    """"ham" (image_id, dx), "isic" (image + 0/1 class columns), or None."""
    if "image_id" in columns and "dx" in columns:
        return "ham"
    if "image" in columns and _one_hot_columns(columns, rows):
        return "isic"
    return None


def _one_hot_columns(columns: list[str], rows: list[dict[str, str]]) -> list[str]:
    return [c for c in columns if c != "image" and all((r.get(c) or "").strip() in _ONE_HOT for r in rows)]


def _csv_labels(path: Path, fmt: str, columns: list[str], rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    """(image id, class name or "") a row."""
    if fmt == "ham":
        return [(r["image_id"], (r["dx"] or "").strip()) for r in rows]
    classes = _one_hot_columns(columns, rows)
    out = []
    for n, r in enumerate(rows):
        set_ = [c for c in classes if float(r[c]) == 1.0]
        if len(set_) > 1:
            raise DataError(f"{path}: line {n + 2}: {r['image']!r} is in {len(set_)} classes ({', '.join(set_)}); "
                            f"one a row")
        out.append((r["image"], set_[0] if set_ else ""))
    return out


def label_csvs(folder: Path) -> list[Path]:
    """The labels CSVs (LabelCsv's formats) at the top of folder; other CSVs (HAM10000's hmnist_*.csv,
    ISIC's metadata) are not."""
    found = []
    for p in sorted(folder.glob("*.csv")):
        try:
            columns, rows = _read_csv(p)
        except DataError:
            continue
        if _csv_format(columns, rows) is not None:
            found.append(p)
    return found


class ImageFolder(Dataset):
    """One folder of images (one unpaired domain, e.g. for CycleGAN); names are the file stems."""

    def __init__(self, root: str | Path, size: int | Sequence[int] | None = None, fit: str = "") -> None:
        self.root = Path(root)
        self.size, self.fit = _size2(size), fit
        _require_dir(self.root, "a folder of images")
        self.items = _images_in(self.root)
        if not self.items:
            raise DataError(f"{self.root}: empty folder (no {'/'.join(IMAGE_SUFFIXES)} images)")
        same = _SameSize(self.size, fit)
        for p in self.items:
            same.check(p)
        same.warn(self.root)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.items[i]
        return {"image": to_image_tensor(_load(path, "RGB", self.size, fit=self.fit)), "name": path.stem}
