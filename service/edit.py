"""`dermagan edit`: add or remove eczema, or segment it, over folders of images, offline.

The paper's second use of its models is data augmentation: eczema drawn onto healthy skin inside
masks, whose masks are then exact labels for a segmenter. A team doing that has thousands of images,
not one request; this command edits them without a server, as the service would: the same settings
(DERMAGAN_*), the same model for the task (`--model` as the form's `model`), the same `pipeline`
functions. So `OUT/sub/NAME.png` is byte for byte what `POST /eczema/TASK` answers for that image
(and mask). Rows of several images share one ONNX Runtime run (the exporter refuses models whose
outputs depend on their batch), and decoding and encoding run on the service's codec threads. The
images in work at once share the service's image budget (DERMAGAN_IMAGE_BUDGET_MP, charged as the
service charges a request: a mask-free edit at a large `--work-px` counts its blending memory), so a
folder of large photographs is edited a few at a time; one larger than the budget goes alone.

Images are files or folders (searched recursively; OUT keeps their subfolders; files named like masks,
NAME_mask.* or NAME_patho.*, are never edited; results folders -- OUT, or any other holding a
provenance.json -- are not searched). OUT must not be, or hold, what the run reads. `--masks DIR` (which may be the images' own folder)
pairs each image with a mask of the same relative name (NAME.*, NAME_mask.* or NAME_patho.*; for the
paper's NAME_image.*, also NAME's); every image must have one, or the run stops before it starts.
Without masks, add / remove are the mask-free CycleGAN edits. `--layout paper` (add with masks) writes
OUT/image/NAME_image.png and the mask as OUT/patho/NAME_patho.png -- the folder `dermagan train
segment --data OUT` reads.

`--url` sends the images to a running service instead (e.g. one on a GPU): service/edit_client.py.

An image the service would refuse (unreadable, a mask of another size, ...) is skipped with the
service's message, and the exit status is 1; the others are written. An image whose mask is empty (in
the paper's layout, healthy skin) has nothing to edit: it is counted, not written, not a failure. Files are
written whole and those already there are skipped, so an interrupted run continues where it stopped;
`OUT/provenance.json` records the model and settings, and a later run with others is refused.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from dermagan.formats import HEIF
from dermagan.service import imaging, pipeline
from dermagan.service.engine import Engine
from dermagan.service.errors import BadRequest, EmptyMask
from dermagan.service.offline import (BATCH, Progress, add_model_arguments, duration, open_engine,
                                      settings_and_manifest, write_whole)
from dermagan.service.settings import Settings

PROG = "dermagan edit"
#: the task a folder edit runs with masks, and without
TASKS = {"add": ("add", "cycle-add"), "remove": ("remove", "cycle-remove"), "segment": ("segment", "segment")}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp") + ((".heic", ".heif") if HEIF else ())
#: a mask's own suffixes: NAME_mask.png and the paper's NAME_patho.png pair with image NAME
MASK_STEMS = ("_mask", "_patho")
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
#: --concurrency and --tries where not given (they apply to --url only)
REMOTE_DEFAULTS = {"concurrency": 4, "tries": 10}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=tuple(TASKS), help="add or remove eczema (inside --masks, or mask-free), or "
                   "segment it")
    p.add_argument("images", nargs="+", type=Path, help="image files or folders (searched recursively; OUT keeps "
                   f"their subfolders): {', '.join(s[1:] for s in IMAGE_SUFFIXES)}")
    p.add_argument("--out", type=Path, required=True, help="folder for the results (OUT/sub/NAME.png)")
    p.add_argument("--masks", type=Path, default=None,
                   help="folder of masks (white = where to edit), by the images' relative names: sub/NAME.*, "
                        "sub/NAME_mask.* or sub/NAME_patho.*; without it, add / remove are the mask-free edits")
    p.add_argument("--format", choices=tuple(EXTENSIONS), default="png", help="add / remove: the results' format "
                   "(default png, lossless; the form's `format`)")
    p.add_argument("--quality", type=int, default=None, help="jpeg / webp quality 1-100 (default 90)")
    p.add_argument("--work-px", type=int, default=None,
                   help="mask-free edits: the shorter side the model sees the image at (the form's `work_px`; "
                        "default the model's resolution)")
    p.add_argument("--output", choices=pipeline.SEGMENT_OUTPUTS, default="mask",
                   help="segment: the mask (default) or the probability of eczema as grey levels")
    p.add_argument("--layout", choices=("mirror", "paper"), default="mirror",
                   help="mirror: OUT/sub/NAME.EXT (default); paper (add with --masks): OUT/image/NAME_image.EXT and "
                        "the mask as OUT/patho/NAME_patho.png, a data set for `dermagan train segment --data OUT`")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="the model to edit with (a name of the manifest serving the task), as the form's `model`; "
                        "default: the one the service uses")
    add_model_arguments(p)
    remote = p.add_argument_group("a running service instead of the local models")
    remote.add_argument("--url", default=None, help="the service's base URL (http://host:8000): each image is sent to "
                        "POST /eczema/TASK; the API key, when it needs one, from DERMAGAN_API_KEY")
    remote.add_argument("--concurrency", type=int, default=None,
                        help=f"requests in flight at once (default {REMOTE_DEFAULTS['concurrency']})")
    remote.add_argument("--tries", type=int, default=None, help="attempts per image through 503 / 504 answers and "
                        f"lost connections (default {REMOTE_DEFAULTS['tries']})")


@dataclass(frozen=True)
class Item:
    image: Path
    name: PurePosixPath  # the relative path without its suffix: the result's name
    mask: Path | None = None


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    task = TASKS[args.task][0 if args.masks is not None else 1]
    _check_out(args)
    items = _pair(_images(args.images, args.masks, args.out), args.masks, args.out)
    outputs = {item: _outputs(args, item) for item in items}
    _check_unique(outputs)  # before OUT or its provenance.json is written: a refused run leaves nothing behind
    if args.url:
        from dermagan.service.edit_client import RemoteEditor

        edit: _Editor | RemoteEditor = RemoteEditor(args, task)
    else:
        edit = _local(args, task)
    recipe = edit.recipe
    args.out.mkdir(parents=True, exist_ok=True)
    _check_provenance(args.out / "provenance.json", recipe)
    if not (args.out / "provenance.json").is_file():  # before any result: an interrupted run is recorded too
        write_whole(args.out / "provenance.json", (json.dumps({**recipe, "runs": []}, indent=2) + "\n").encode())
    todo = [item for item in items if not all(p.exists() for p in outputs[item])]

    t0 = time.monotonic()
    failures: list[str] = []
    empty = 0
    progress = Progress(f"{PROG} {args.task}", len(todo))
    with ThreadPoolExecutor(edit.threads, thread_name_prefix="edit") as pool:
        for group in _groups(todo, edit.group, edit.weight, edit.budget):
            for item, result in zip(group, edit(group, pool)):
                if isinstance(result, EmptyMask):
                    empty += 1
                    continue
                if isinstance(result, str):
                    failures.append(f"{item.image}{f' (mask {item.mask})' if item.mask else ''}: {result}")
                    print(f"{PROG}: skipped {failures[-1]}", file=sys.stderr)
                    continue
                for path, data in zip(outputs[item], result):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_whole(path, data)
            progress.update(len(group), f"{len(failures)} failed" if failures else "")
    written = len(todo) - len(failures) - empty
    there = len(items) - len(todo)
    print(f"{args.task}: {written} image{'' if written == 1 else 's'} by {edit.who} in {duration(time.monotonic() - t0)}"
          + (f"; {there} were there already" if there else "")
          + (f"; {empty} with an empty mask left alone" if empty else "")
          + (f"; {len(failures)} failed (listed above)" if failures else "")
          + (f"; {edit.retries} answers retried (503 / 504 / connection)" if edit.retries else "")
          + f" -> {args.out}")
    record = {**recipe, "runs": _provenance(args.out / "provenance.json").get("runs", []) + [
        {"inputs": [str(p) for p in args.images], "masks": str(args.masks) if args.masks else None,
         "written": written, "there": there, "empty_mask": empty, "failed": len(failures),
         "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]}
    write_whole(args.out / "provenance.json", (json.dumps(record, indent=2) + "\n").encode())
    return 1 if failures else 0


def _local(args: argparse.Namespace, task: str) -> "_Editor":
    settings, manifest = settings_and_manifest(args, PROG)
    found = manifest.by_task(task)
    entry = found[0] if found and args.model is None else next((e for e in found if e.name == args.model), None)
    if entry is None:
        named = f"named {args.model!r} " if args.model is not None else ""
        fail(f"no {task} model {named}in {settings.models_dir} (its {task} models: "
              f"{[e.name for e in found] or 'none'})")
    engine = open_engine(entry, settings, PROG)
    if args.work_px is not None and args.work_px < min(engine.hw):
        fail(f"--work-px must be at least {min(engine.hw)} (this model's resolution), got {args.work_px}")
    return _Editor(args, settings, engine, task)


def fail(message: str) -> None:
    raise SystemExit(f"{PROG}: error: {message}")


def _check_options(args: argparse.Namespace) -> None:
    """Options that do not apply to this edit are refused, as the service refuses such form fields."""
    if args.task == "segment":
        given = [o for o, v in (("--masks", args.masks), ("--quality", args.quality), ("--work-px", args.work_px))
                 if v is not None] + (["--format"] if args.format != "png" else []) \
            + (["--layout paper"] if args.layout == "paper" else [])
        if given:
            fail(f"not for segment (its result is a greyscale PNG at the image's size): {', '.join(given)}")
    elif args.output != "mask":
        fail("--output applies to segment")
    if args.quality is not None and (args.format == "png" or not 1 <= args.quality <= 100):
        fail("--quality is 1-100 and applies to --format jpeg or webp (png is lossless)")
    if args.work_px is not None and args.masks is not None:
        fail("--work-px applies to edits without masks; with one, the mask's box sets the scale")
    if args.layout == "paper" and not (args.task == "add" and args.masks is not None):
        fail("--layout paper is for add with --masks: the masks are the labels of the eczema drawn into them")
    if args.masks is not None and not args.masks.is_dir():
        fail(f"--masks {args.masks}: not a folder")
    remote = {f"--{name}": getattr(args, name) for name in REMOTE_DEFAULTS}
    if args.url is None and any(v is not None for v in remote.values()):
        fail(f"{', '.join(o for o, v in remote.items() if v is not None)}: for --url (requests to a running service); "
             "the local models edit without retries, a group of images at a time")
    if any(v is not None and v < 1 for v in remote.values()):
        fail(f"{', '.join(f'{o} {v}' for o, v in remote.items() if v is not None and v < 1)}: must be at least 1")


def _check_out(args: argparse.Namespace) -> None:
    """OUT may lie inside an input folder (it is then not searched), but must not be one, nor hold one:
    results would be written over, or beside, the images they come from and be taken as input next time."""
    out = args.out.resolve()
    for given in [*args.images, *([args.masks] if args.masks is not None else [])]:
        p = given.resolve()
        if p == out or out in p.parents:
            fail(f"--out {args.out} holds {given}, which this run reads; write the results to a folder outside it")
        if p in out.parents and not (out / "provenance.json").is_file() \
                and next(_image_files(args.out, out.parent / ".none"), None) is not None:
            fail(f"--out {args.out} lies in {given} and holds images that no `dermagan edit` wrote (they would be "
                  "neither edited nor kept apart from the results); choose an empty or new folder")


def _images(paths: list[Path], masks: Path | None, out: Path) -> list[Item]:
    """The images under `paths` (files, or folders searched recursively), by relative name. Skipped:
    hidden files, other suffixes, masks (NAME_mask.*, NAME_patho.*), a --masks folder inside and OUT."""
    mask_dir = masks.resolve() if masks is not None else None
    items: list[Item] = []
    for path in paths:
        if path.is_file():
            items.append(Item(path, PurePosixPath(path.stem)))
            continue
        if not path.is_dir():
            fail(f"{path}: no such file or folder")
        inner = mask_dir if mask_dir is not None and mask_dir != path.resolve() \
            and mask_dir.is_relative_to(path.resolve()) else None
        for p, name in _image_files(path, out):
            if _base(name, MASK_STEMS) == name and not (inner is not None and p.resolve().is_relative_to(inner)):
                items.append(Item(p, name))
    if not items:
        fail(f"no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images in {', '.join(map(str, paths))}")
    return items


def _image_files(folder: Path, out: Path) -> Iterator[tuple[Path, PurePosixPath]]:
    """(path, relative name without suffix) of every image file under `folder`. Skipped: hidden files,
    `out` and any other results folder inside (one with a provenance.json: an earlier run's results)."""
    results = [out.resolve()] + [p.parent.resolve() for p in folder.rglob("provenance.json") if p.parent != folder]
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if (p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not any(s.startswith(".") for s in rel.parts)
                and not any(p.resolve().is_relative_to(r) for r in results)):
            yield p, PurePosixPath(rel.with_suffix("").as_posix())


def _base(name: PurePosixPath, suffixes: tuple[str, ...]) -> PurePosixPath:
    for suffix in suffixes:
        if name.name.endswith(suffix) and len(name.name) > len(suffix):
            return name.with_name(name.name[: -len(suffix)])
    return name


def _pair(items: list[Item], masks: Path | None, out: Path) -> list[Item]:
    """Each image with its mask from `masks` (by relative name); SystemExit listing those without one."""
    if masks is None:
        return items
    images = {item.image.resolve() for item in items}  # --masks may be the images' own folder
    index: dict[PurePosixPath, list[Path]] = {}
    for p, name in _image_files(masks, out):
        if p.resolve() not in images:
            for key in {name, _base(name, MASK_STEMS)}:
                index.setdefault(key, []).append(p)
    paired, missing = [], []
    for item in items:
        candidates = next((index[k] for k in (item.name, _base(item.name, ("_image",))) if k in index), [])
        if len(candidates) > 1:
            fail(f"{item.image}: more than one mask fits it ({', '.join(map(str, candidates))})")
        if not candidates:
            missing.append(item)
            continue
        paired.append(Item(item.image, item.name, candidates[0]))
    if missing:
        shown = ", ".join(str(m.image) for m in missing[:5]) + (", ..." if len(missing) > 5 else "")
        fail(f"no mask in {masks} for {len(missing)} of {len(items)} images ({shown}); a mask of image sub/NAME.* "
              "is sub/NAME.*, sub/NAME_mask.* or sub/NAME_patho.* under --masks")
    return paired


def _outputs(args: argparse.Namespace, item: Item) -> tuple[Path, ...]:
    """Where `item`'s result goes (and, in the paper's layout, its mask)."""
    ext = EXTENSIONS[args.format]
    if args.layout == "mirror":
        return (args.out / f"{item.name}{ext}",)
    name = "_".join(_base(item.name, ("_image",)).parts)
    return args.out / "image" / f"{name}_image{ext}", args.out / "patho" / f"{name}_patho.png"


def _check_unique(outputs: dict[Item, tuple[Path, ...]]) -> None:
    seen: dict[Path, Path] = {}
    for item, paths in outputs.items():
        if paths[0] in seen:
            fail(f"{seen[paths[0]]} and {item.image} would both be written to {paths[0]}; rename one")
        seen[paths[0]] = item.image


def recipe_of(args: argparse.Namespace, settings: Settings | None, task: str, model: dict[str, Any],
            hw: tuple[int, int]) -> dict[str, Any]:
    """What decides the results' bytes: a folder holds the results of one recipe. A service's own
    settings are not known to its clients: its URL stands for them."""
    how: dict[str, Any] = {"format": args.format, "quality": args.quality if args.format != "png" else None}
    if task == "segment":
        how = {"output": args.output}
    elif task in ("add", "remove"):
        how["layout"] = args.layout
        if settings is not None:
            how.update(mask_dilate_px=settings.mask_dilate_px, mask_context=settings.mask_context)
    else:
        how["work_px"] = args.work_px or min(hw)
        if settings is not None:
            how["tile_overlap"] = settings.tile_overlap
    if settings is None:
        how["service"] = args.url
    return {"task": task, "model": {k: model[k] for k in ("name", "version", "sha256")}, "settings": how}


def _provenance(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as e:
        fail(f"{path} is unreadable ({e}); it records how the results there were made: choose another --out")
        raise  # unreachable


def _check_provenance(path: Path, recipe: dict[str, Any]) -> None:
    before = _provenance(path)
    if not before:
        return
    was, now = _flat({k: before.get(k) for k in recipe}), _flat(recipe)
    changed = [f"{k} {was.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
    if changed:
        fail(f"{path.parent} holds results made otherwise ({'; '.join(changed)}); choose another --out")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _groups(items: list[Item], most: int, weigh: Callable[[Item], int], budget: int) -> Iterator[list[Item]]:
    """`items` in order, in groups of at most `most`; with a `budget` > 0 also at most `budget` pixels of
    the image budget together (`weigh`: an item's, from its header), except a group's first item, which
    may hold more on its own -- as the service's image budget lets such an image run alone."""
    group: list[Item] = []
    held = 0
    for item in items:
        weight = weigh(item) if budget > 0 else 0
        if group and (len(group) == most or held + weight > budget > 0):
            yield group
            group, held = [], 0
        group.append(item)
        held += weight
    if group:
        yield group


class _Editor:
    """One group of images -> per image, the encoded result(s), or the service's message refusing it."""

    def __init__(self, args: argparse.Namespace, settings: Settings, engine: Engine, task: str) -> None:
        self.args, self.settings, self.engine, self.task = args, settings, engine, task
        self.output = imaging.OutputFormat(args.format, args.quality or 90)
        e = engine.entry
        self.recipe = recipe_of(args, settings, task, {"name": e.name, "version": e.version, "sha256": e.sha256},
                              engine.hw)
        self.who = f"{e.name} ({engine.provider})"
        self.threads, self.group = settings.codec_workers, BATCH
        # the images of a group are in memory together (as many as a group, not one at a time): they share
        # the service's image budget, in the same pixels (DERMAGAN_IMAGE_BUDGET_MP)
        self.budget = int(settings.image_budget_mp * 1e6)
        self.retries = 0  # (only a remote service's answers are retried)

    def weight(self, item: Item) -> int:
        """What `item` holds of the image budget, from its image's header, as the service charges it: a
        mask-free edit its working memory (`pipeline.tiled_pixels`), the others their image's pixels. Only the
        header is read (the whole file is read once, when its group is planned)."""
        s, hw = self.settings, self.engine.hw
        try:
            with item.image.open("rb") as image:
                if self.task in ("add", "remove", "segment"):
                    return pipeline.image_pixels(image, s.max_pixels)
                return pipeline.tiled_pixels(image, hw, work_px=self.args.work_px or min(hw), max_pixels=s.max_pixels)
        except OSError:
            return 0  # (its group's planning names the problem)
        except BadRequest:
            return 0  # refused when planned, with the service's message

    def __call__(self, group: list[Item], pool: ThreadPoolExecutor) -> list[tuple[bytes, ...] | str | EmptyMask]:
        plans = list(pool.map(lambda item: _refusal_or(self._plan, item), group))
        ok = [i for i, p in enumerate(plans) if not isinstance(p, (str, EmptyMask))]
        if self.task in ("add", "remove", "segment"):
            out = self._run_rows([plans[i].inputs for i in ok])
            rows = dict(zip(ok, out))
            finish = lambda i: _refusal_or(self._finish, plans[i], rows[i])  # noqa: E731
        else:
            blenders = {i: pipeline.TileBlender(plans[i], fade=self._fade) for i in ok}
            self._run_tiles({i: plans[i] for i in ok}, blenders)
            finish = lambda i: _refusal_or(lambda: (blenders[i].result(),))  # noqa: E731
        done = dict(zip(ok, pool.map(finish, ok)))
        return [done.get(i, plans[i]) for i in range(len(group))]

    @property
    def _fade(self) -> float:
        return pipeline.REMOVED_DETAIL_FADE if self.args.task == "remove" else 0.0

    def _plan(self, item: Item) -> Any:
        s, hw = self.settings, self.engine.hw
        image = item.image.read_bytes()
        if self.task == "segment":
            return pipeline.plan_segment(image, hw, max_pixels=s.max_pixels)
        if item.mask is not None:
            return pipeline.plan_masked_edit(image, item.mask.read_bytes(), hw, max_pixels=s.max_pixels,
                                             dilate_px=s.mask_dilate_px, context=s.mask_context, output=self.output)
        return pipeline.plan_tiled_edit(image, hw, max_pixels=s.max_pixels, overlap=s.tile_overlap,
                                        work_px=self.args.work_px or min(hw), output=self.output)

    def _finish(self, plan: Any, row: np.ndarray) -> tuple[bytes, ...]:
        if self.task == "segment":
            return (pipeline.finish_segment(plan, row, self.args.output),)
        result = pipeline.finish_masked_edit(plan, row, dilate_px=self.settings.mask_dilate_px, fade=self._fade)
        return (result, imaging.encode_mask_png(plan.mask)) if self.args.layout == "paper" else (result,)

    def _run_rows(self, inputs: list[pipeline.Arrays]) -> list[np.ndarray]:
        """One-row inputs of several images -> each one's output row, BATCH rows a run."""
        out: list[np.ndarray] = []
        for i in range(0, len(inputs), BATCH):
            chunk = inputs[i:i + BATCH]
            feeds = {k: np.concatenate([x[k] for x in chunk]) for k in chunk[0]}
            result = next(iter(self.engine.run(feeds).values()))
            out.extend(result)
        return out

    def _run_tiles(self, plans: dict[int, pipeline.TiledEdit], blenders: dict[int, pipeline.TileBlender]) -> None:
        """The tiles of several images, BATCH rows a run (made as they are needed: memory stays bounded)."""
        def tiles() -> Iterator[tuple[int, tuple[int, int], np.ndarray]]:
            for i, plan in plans.items():
                for origins, inputs in plan.chunks(BATCH):
                    yield from ((i, o, row) for o, row in zip(origins, inputs["image"]))
        stream = tiles()
        while chunk := list(itertools.islice(stream, BATCH)):
            out = self.engine.run({"image": np.stack([row for _, _, row in chunk])})["image"]
            for (i, origin, _), row in zip(chunk, out):
                blenders[i].add([origin], row[None])


def _refusal_or(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), or the message with which the service would refuse the request (a 4xx), or an
    unreadable file's; an empty mask is returned as such."""
    try:
        return fn(*args)
    except EmptyMask as e:
        return e
    except BadRequest as e:
        return e.detail
    except OSError as e:
        return f"cannot read {e.filename or 'the file'}: {e.strerror or e}"
