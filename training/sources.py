"""The Dataset a family trains on, built from `DataConfig` through the loaders of `training/data.py`.

- no `root`: the procedural `SynthDataset`, one per kind (generate conditions on the kind index);
- `root` given: `PairedFolder` (image/, patho/, healthy/ paired by name) for segment and paired
  add / remove; `UnpairedFolder` (the same folders; healthy skin = images with an empty mask plus
  healthy/ under any name) for the CycleGAN and add / remove with `unpaired`, as real photographs
  come; for generate a labels CSV (HAM10000's metadata or ISIC's ground truth, given as --data or
  alone at the top of the folder: `LabelCsv`), else `ClassFolder` (one sub-folder per class) or
  `ImageFolder` (flat).

`check_sample` is what makes bad data fail before training: it names the missing tensor and what
the family needs it for.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dermagan.cpus import cgroup_memory_left
from dermagan.manifest import check_labels
from dermagan.training.config import TrainConfig
from dermagan.training.distributed import is_first_process

log = logging.getLogger("dermagan.training")

#: family -> (tensor key, why it is needed). Explicit table of each family's data needs.
REQUIRED: dict[str, tuple[tuple[str, str], ...]] = {
    "generate": (),
    "add": (("mask", "the mask says where to add eczema (patho/ folder)"),
            ("healthy", "healthy skin is the input of add (a healthy/ folder of exact pairs; without them "
                        "pass --unpaired: healthy skin is then the images with an empty mask and healthy/)")),
    "remove": (("mask", "the mask says where to remove eczema (patho/ folder)"),
               ("healthy", "healthy skin is the target of remove (a healthy/ folder of exact pairs; without "
                           "them pass --unpaired: healthy skin is then the images with an empty mask and healthy/)")),
    "cycle": (("healthy", "CycleGAN needs the healthy domain (healthy/ folder)"),),
    "segment": (("mask", "the mask is the segmentation target (patho/ folder)"),),
}


class KindLabelled(Dataset):
    """A generator's samples of one kind or class: the image and name, "label" a fixed index -- what a multi-kind
    SynthDataset gives. A single kind's triplet extras (mask, healthy skin, hand) are dropped: a generator never
    reads them, and cached they would take 8 bytes a pixel instead of 3."""

    def __init__(self, inner: Dataset, label: int) -> None:
        self.inner, self.label = inner, label

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.inner[i]
        return {"image": s["image"], "name": s["name"], "label": torch.tensor(self.label, dtype=torch.int64)}


class Memo(Dataset):
    """Keeps samples in memory as uint8 (a 128 px triplet renders in ~50 ms on one core, a hand in ~100 ms;
    re-rendering them every epoch would starve a GPU). Images are on uint8's grid and masks in {0, 1}
    (`data.to_image_tensor`, `to_mask_tensor`: the renderer's and the folder loaders' alike), and decoding
    repeats `to_image_tensor`'s exact arithmetic, so a cached sample is bitwise the one read."""

    def __init__(self, inner: Dataset) -> None:
        self.inner, self.cache = inner, {}  # type: Dataset, dict[int, dict[str, Any]]

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i not in self.cache:
            self.cache[i] = {k: _pack(v) for k, v in self.inner[i].items()}
        return {k: _unpack(v) for k, v in self.cache[i].items()}

    def nbytes(self) -> int:
        """The whole set's size once cached, from its first sample (rendered and cached here)."""
        self[0]
        return len(self) * sum(v.numel() * v.element_size() for v in self.cache[0].values() if torch.is_tensor(v))

    def fill(self, processes: int) -> None:
        """Render every sample not cached yet in `processes` DataLoader workers: the first epoch of a large
        set is then not bound by one core rendering. Bitwise what `[i]` renders."""
        from torch.utils.data import DataLoader, Subset

        todo = [i for i in range(len(self)) if i not in self.cache]
        loader = DataLoader(Subset(_Packed(self.inner), todo), batch_size=PRERENDER_CHUNK, num_workers=processes,
                            collate_fn=list)
        for rendered in loader:
            for i, sample in rendered:
                if isinstance(sample, Exception):  # an unreadable file, named as the main process would
                    raise sample
                self.cache[i] = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in sample.items()}

    def save(self, path: Path, key: dict[str, Any]) -> None:
        """Write the whole cache (every sample rendered) to `path` with `key`, what `load` checks; a failed
        write (a full disk) is said and costs nothing but a later rendering."""
        from dermagan.training.checkpoint import write_atomic

        try:
            write_atomic(path, {"key": key, "samples": [self.cache[i] for i in range(len(self))]})
        except OSError as e:
            log.warning("dermagan: warning: could not keep the rendered data in %s (%s); --resume renders it again",
                        path, e)

    def load(self, path: Path, key: dict[str, Any]) -> bool:
        """Fill the cache from `path` if it holds this set (`key` and length alike); False (nothing read) if not."""
        if not path.is_file():
            return False
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated or foreign: rendered again (and written anew)
            log.warning("dermagan: warning: %s is unreadable (%s); rendering the data again", path, e)
            return False
        if not isinstance(saved, dict) or saved.get("key") != key or len(saved.get("samples", ())) != len(self):
            log.info("dermagan: %s holds other data than this run's; rendering the data again", path)
            return False
        self.cache = dict(enumerate(saved["samples"]))
        return True


class _Packed(Dataset):
    """(i, sample i packed as Memo keeps it), its tensors as numpy: Memo.fill's workers send it whole through
    the pipe (tensors would come in shared memory, an open file per tensor kept)."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, dict[str, Any] | Exception]:
        try:
            packed = {k: _pack(v) for k, v in self.inner[i].items()}
        except Exception as e:  # raised as it is by Memo.fill, not wrapped in the DataLoader's worker traceback
            return i, e
        return i, {k: v.numpy() if torch.is_tensor(v) else v for k, v in packed.items()}


def _pack(v: Any) -> Any:
    if torch.is_tensor(v) and v.dtype == torch.float32 and v.dim() == 3:
        if v.shape[0] == 3:  # image in [-1, 1] -> uint8
            return ((v + 1.0) * 127.5).round().to(torch.uint8)
        return (v > 0.5).to(torch.uint8)  # mask in {0, 1}
    return v


def _unpack(v: Any) -> Any:
    if torch.is_tensor(v) and v.dtype == torch.uint8:
        return v.float() / 127.5 - 1.0 if v.shape[0] == 3 else v.float()
    return v


#: Cache the data set when its uint8 copy (what each sample holds: an image 3 bytes a pixel; a triplet's
#: image, healthy skin and masks 8) fits in `--cache-gb` GB (GiB), 1 by default.
MEMO_MAX_BYTES = 1 << 30
#: A cached set of at least this many samples is read before training, in as many processes as
#: the run has threads or DataLoader workers (`Memo.fill`); smaller ones are read as their first epoch draws them.
PRERENDER_MIN = 256
PRERENDER_CHUNK = 32
#: RUN/DATA_CACHE: a procedural set rendered ahead (`Memo.fill`), kept beside the checkpoints so that `--resume`
#: reads it back instead of rendering it again (8000 hands at 128 px, 393 MB: ~8 min to render on 2 cores) --
#: and continues on the very samples the run began with, even if the renderer has changed since.
DATA_CACHE = "data-cache.pt"


def build_dataset(cfg: TrainConfig, store: Path | None = None, borrow: Path | None = None) -> tuple[Dataset, list[str]]:
    """(dataset, label names). Label names are the kinds or classes a generator is conditioned on.

    `store` (RUN/DATA_CACHE): where a procedural set rendered ahead is kept, and read back from when it holds
    the same set (kinds, size, length, seed); `borrow`: another run's such file (the run a warm start begins
    from), read when `store` does not hold the set and copied into `store`. A folder's photographs are read
    from the folder each time, never copied into the run."""
    d = cfg.data
    if d.root is not None:
        csv = cfg.family == "generate" and Path(d.root).suffix.lower() == ".csv"
        if not (Path(d.root).is_file() if csv else Path(d.root).is_dir()):
            raise ValueError(f"{'labels CSV' if csv else 'data folder'} {d.root!r} does not exist (--data)")
    from dermagan.training import data  # the loaders of docs/INTERFACES.md

    if d.root is None:
        if cfg.family == "generate":  # one conditional generator over the kinds (label = kind index)
            multi = len(d.kinds) > 1
            dataset: Dataset = data.SynthDataset(d.kinds if multi else d.kinds[0], size=cfg.size,
                                                 length=d.length * len(d.kinds), seed=d.seed)
            dataset = dataset if multi else KindLabelled(dataset, 0)
        elif len(d.kinds) > 1:
            raise ValueError(f"{cfg.family} trains on one kind, got {', '.join(d.kinds)} (--kinds eczema or hand)")
        else:
            dataset = data.SynthDataset(d.kinds[0], size=cfg.size, length=d.length, seed=d.seed)
        key = {"format": 1, "generator": cfg.family == "generate", "kinds": list(d.kinds), "size": cfg.size,
               "length": len(dataset), "seed": d.seed}  # type: ignore[arg-type]
        return (cached(dataset, d.workers, store, key, borrow, d.cache_gb),
                list(d.kinds) if cfg.family == "generate" else [])
    root = Path(d.root)
    if cfg.family == "cycle" or (cfg.family in ("add", "remove") and d.unpaired):
        dataset = data.UnpairedFolder(root, size=cfg.size, patches_from=d.patches, fit=d.fit)
        labels: list[str] = []
    elif cfg.family != "generate":
        dataset, labels = data.PairedFolder(root, size=cfg.size, patches_from=d.patches, fit=d.fit), []
    else:
        dataset, labels = generator_folder(root, cfg.size, d.fit)
    return cached(dataset, d.workers, cache_gb=d.cache_gb), labels


def cached(dataset: Dataset, workers: int = 0, store: Path | None = None, key: dict[str, Any] | None = None,
           borrow: Path | None = None, cache_gb: float = 1.0) -> Dataset:
    """`dataset` in a `Memo` when its uint8 copy fits `cache_gb` GiB and the machine's free memory (the renderer's
    samples and a folder's photographs alike: read once, not every epoch; a 1024x768 JPEG takes ~10-18 ms to read at
    128 px), filled ahead in the run's threads' worth of processes or its --workers when it is large: DataLoader
    workers forked from a full cache share it; from an empty one, each would read and keep its own copy. With `store`, a set
    rendered ahead is kept there under `key` (by the first of torchrun's processes), and read back from there --
    or from `borrow` (another run's file: a warm start's source), then kept in `store` as if rendered here."""
    if cache_gb <= 0:  # --cache-gb 0: every epoch reads the set again
        return dataset
    memo = Memo(dataset)
    if store is not None and key is not None:
        if memo.load(store, key):
            print(f"dermagan train: note: read the {len(memo)} samples rendered before from {store}", file=sys.stderr)
            return memo
        if borrow is not None and memo.load(borrow, key):
            print(f"dermagan train: note: read the {len(memo)} samples that {borrow} holds (the same set: "
                  f"not rendered again)", file=sys.stderr)
            if is_first_process():
                _keep_borrowed(borrow, store, memo, key)
            return memo
    if (nbytes := memo.nbytes()) > cache_gb * MEMO_MAX_BYTES:
        if workers == 0:
            log.warning("dermagan: warning: the %d samples (%.1f GB as 8-bit) are over the in-memory cache's %g GB: "
                        "they are read again every epoch, by the training process itself; --cache-gb %g keeps them "
                        "in memory (in each training process), --workers N reads them in N processes beside it (a GPU "
                        "run needs one or the other)", len(memo), nbytes / 1e9, cache_gb,
                        math.ceil(nbytes / MEMO_MAX_BYTES * 1.05 * 10) / 10)
        return dataset
    if (free := memory_available()) is not None and nbytes > 0.8 * free:
        # a set over what the machine has left would be rendered for minutes and then killed for memory
        log.warning("dermagan: warning: the %d samples (%.1f GB as 8-bit) are more than this machine's free memory "
                    "(%.1f GB available) can spare: they are read again every epoch%s", len(memo), nbytes / 1e9,
                    free / 1e9, "; --workers N reads them in N processes beside the training one" if workers == 0 else "")
        return dataset
    processes = max(torch.get_num_threads(), workers)
    if len(memo) >= PRERENDER_MIN and processes > 1:
        memo.fill(processes)
        if store is not None and key is not None and is_first_process():
            memo.save(store, key)
    return memo


def memory_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes this process may still allocate: /proc/meminfo's MemAvailable, or less where its cgroup's memory limit
    (a container's) is nearer (`dermagan.cpus.cgroup_memory_left`); None where nothing says."""
    left = [n for n in (cgroup_memory_left(),) if n is not None]
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                left.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return min(left) if left else None


def _keep_borrowed(borrow: Path, store: Path, memo: Memo, key: dict[str, Any]) -> None:
    """`store` as a hard link to `borrow` (no second copy on disk; both runs' own later writes replace their
    file, never the other's), else (another file system) written from `memo`."""
    store.parent.mkdir(parents=True, exist_ok=True)
    store.unlink(missing_ok=True)
    try:
        os.link(borrow, store)
    except OSError:
        memo.save(store, key)


def build_validation(cfg: TrainConfig) -> Dataset:
    """The held-out samples of --val-every: --val-data's folder (read as --data is), or the renderer at the
    seeds of `dermagan evaluate --split validation`'s first set (the training data is seeds [seed, seed +
    length)); check_sample'd."""
    d = cfg.data
    if d.val_root is None:
        from dermagan.training import data
        from dermagan.training.evaluate import SPLITS, eval_seed_base

        dataset: Dataset = data.SynthDataset(d.kinds[0], size=cfg.size, length=d.val_n,
                                             seed=eval_seed_base(SPLITS["validation"]))
    else:
        if not Path(d.val_root).is_dir():
            raise ValueError(f"validation folder {d.val_root!r} does not exist (--val-data)")
        dataset = build_dataset(replace(cfg, data=replace(d, root=d.val_root)))[0]
    check_sample(replace(cfg, data=replace(d, root=d.val_root)), dataset)  # its errors name the folder
    return dataset


def generator_folder(root: Path, size: int, fit: str = "") -> tuple[Dataset, list[str]]:
    """A generator's own images and its class names: a labels CSV (`root` itself or the only one at its
    top), class folders, or one flat folder (one class, named after the folder)."""
    from dermagan.training import data

    csvs = [root] if root.is_file() else data.label_csvs(root)
    if len(csvs) > 1:
        raise ValueError(f"{root} holds {len(csvs)} labels CSVs ({', '.join(p.name for p in csvs)}); "
                         f"pass the one to train on as --data")
    if csvs:  # HAM10000 / ISIC: the images anywhere below the CSV's folder
        ds: Dataset = data.LabelCsv(csvs[0].parent, csvs[0], size=size, fit=fit)
    elif any(p.is_dir() for p in root.iterdir()):
        paired = [k for k in data.PairedFolder.SUFFIX if (root / k).is_dir()]
        if (root / "image").is_dir() and paired:
            # read as class folders, its masks would be a class the generator learns to draw
            raise ValueError(f"{root} is the paper's layout (image/ with {', '.join(k + '/' for k in paired)}), not "
                             f"class folders: generate would take {['image', *paired]} for classes. To generate its "
                             f"photographs, pass --data {root / 'image'} (one flat folder: one class, named after the "
                             "folder; link or copy it to a folder named for the class, e.g. eczema/, to name it)")
        ds = data.ClassFolder(root, size=size, fit=fit)
    else:  # one flat folder: one class, named after the folder
        ds = KindLabelled(data.ImageFolder(root, size=size, fit=fit), 0)
    labels = list(ds.classes) if not isinstance(ds, KindLabelled) else [root.name.lower() or "image"]  # type: ignore[attr-defined]
    check_labels(labels)  # names `dermagan export` would refuse: refused before training, not after
    return ds, labels


def check_sample(cfg: TrainConfig, dataset: Dataset) -> None:
    """Fail before training when the data cannot feed the family (raises ValueError)."""
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError(f"the data set is empty ({cfg.data.root or 'synthetic'})")
    sample = dataset[0]
    where = cfg.data.root or "the synthetic data"
    for key, why in REQUIRED[cfg.family]:
        if key not in sample:
            raise ValueError(f"{cfg.family} needs {key!r} in every sample, but {where} has none: {why}")
    for key, channels in (("image", 3), ("healthy", 3), ("mask", 1)):
        if key in sample and tuple(sample[key].shape) != (channels, cfg.size, cfg.size):
            raise ValueError(f"expected {key!r} of shape ({channels}, {cfg.size}, {cfg.size}) from {where}, "
                             f"got {tuple(sample[key].shape)}")
    if cfg.family == "generate" and "label" not in sample:
        raise ValueError(f"generate needs a 'label' per sample from {where}")
