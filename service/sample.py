"""`dermagan sample`: many generated images to a folder, offline -- data augmentation without a server.

The images are the service's: the same model serves a kind (`manifest.most_specific`), image `seed` is
drawn from the same noise (`pipeline.generate_inputs`) and encoded by the same code
(`pipeline.finish_generate`), so `OUT/KIND/KIND_SEED.png` is byte for byte what
`POST /generate {"kind": KIND, "seed": SEED}` answers. The folder is ISIC-style class folders
(`dermagan train generate --data OUT` or any image classifier reads it). Files are written whole
(a temporary name, then renamed) and those already there are skipped, so an interrupted run continues
where it stopped. `OUT/provenance.json` records which model file drew which seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path

from dermagan.manifest import ModelEntry, most_specific
from dermagan.service import pipeline
from dermagan.service.offline import (BATCH, Progress, add_model_arguments, duration, open_engine,
                                      settings_and_manifest, write_whole)
from dermagan.service.settings import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", nargs="+", required=True, metavar="KIND",
                   help="what to draw, one folder each: eczema, hand, lesion for the shipped models, or the class names "
                        "a generator of one's own images draws (its labels in the manifest, e.g. MEL NV)")
    p.add_argument("--count", type=int, required=True, help="images per kind")
    p.add_argument("--seed", type=int, default=0, help="first seed: the images are seeds SEED .. SEED + count - 1")
    p.add_argument("--out", type=Path, required=True, help="folder: OUT/KIND/KIND_SEED.png")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="the generator to draw with (a name of the manifest that draws every --kind), as POST "
                        "/generate's `model`; default: the one the service draws each kind with")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.count < 1 or args.seed < 0 or args.seed + args.count - 1 > pipeline.MAX_SEED:
        last = pipeline.MAX_SEED - max(args.count, 1) + 1
        raise SystemExit(f"dermagan sample: error: --count must be >= 1 and the seeds --seed .. --seed + --count - 1 "
                         f"within 0..{pipeline.MAX_SEED} (as POST /generate takes them); got --seed {args.seed} "
                         f"--count {args.count}" + (f" (with that count the largest --seed is {last})"
                                                    if args.count >= 1 and args.seed > last >= 0 else ""))
    settings, manifest = settings_and_manifest(args, "dermagan sample")
    generators = manifest.by_task("generate")
    provenance_path = args.out / "provenance.json"
    try:
        provenance = json.loads(provenance_path.read_text()) if provenance_path.is_file() else {}
    except (OSError, ValueError) as e:
        raise SystemExit(f"dermagan sample: error: {provenance_path} is unreadable ({e}); it records which model "
                         f"drew the images there: choose another --out") from None
    # every kind's model and folder checked before any image is drawn: a refused run leaves nothing behind
    entries = {kind: _choose(args, kind, settings, generators, provenance) for kind in dict.fromkeys(args.kind)}

    def save() -> None:
        write_whole(provenance_path, (json.dumps(provenance, indent=2) + "\n").encode())

    for kind, entry in entries.items():
        try:
            _sample_kind(args, kind, entry, settings, provenance, save)
        except OSError as e:
            raise SystemExit(f"dermagan sample: error: cannot write under {args.out}: {e.strerror or e} "
                             f"({e.filename or args.out})") from None
    return 0


def _choose(args: argparse.Namespace, kind: str, settings: Settings, generators: list[ModelEntry],
            provenance: dict[str, list[dict[str, object]]]) -> ModelEntry:
    """The model that draws `kind` (--model or the service's choice); SystemExit where there is none, or where
    OUT/KIND holds another model's images."""
    entry = most_specific(generators, kind) if args.model is None else \
        next((e for e in generators if e.name == args.model and kind in e.labels), None)
    if entry is None and args.model is not None:
        raise SystemExit(f"dermagan sample: error: no generate model named {args.model!r} in {settings.models_dir} "
                         f"draws {kind!r} (those that do: {[e.name for e in generators if kind in e.labels]})")
    if entry is None:
        raise SystemExit(f"dermagan sample: error: no model in {settings.models_dir} draws {kind!r} "
                         f"(generate models: {[e.name for e in generators] or 'none'})")
    other = {r["sha256"] for r in provenance.get(kind, [])} - {entry.sha256}
    if other:
        # the model the folder began with may still be here, no longer the default for the kind (a one-kind
        # generator added beside a shared one): name it, so the folder can be finished with the same model
        began = [e.name for e in generators if e.sha256 in other and kind in e.labels]
        hint = f"; or finish it with the model it began with: --model {began[0]}" if began and args.model is None else ""
        raise SystemExit(f"dermagan sample: error: {args.out / kind} holds images of another {kind} model (sha256 "
                         f"{sorted(other)[0][:12]}…, now {entry.name} {entry.sha256[:12]}…); choose another --out{hint}")
    return entry


def _sample_kind(args: argparse.Namespace, kind: str, entry: ModelEntry, settings: Settings,
                 provenance: dict[str, list[dict[str, object]]], save: Callable[[], None]) -> None:
    """Draw `kind`'s missing images into OUT/KIND with `entry` and add this run to `provenance`."""
    engine = open_engine(entry, settings, "dermagan sample")
    folder = args.out / kind
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    seeds = range(args.seed, args.seed + args.count)
    done = sum((folder / f"{kind}_{s}.png").exists() for s in seeds)  # counted, not listed: any --count fits
    if done < args.count:  # a run that draws nothing is not recorded (each rerun added an entry)
        # recorded before the first image: an interrupted run still keeps another model out of this folder
        provenance.setdefault(kind, []).append({"model": entry.name, "version": entry.version,
                                                "sha256": entry.sha256, "seeds": [args.seed, args.seed + args.count - 1]})
        save()
    label = entry.labels.index(kind) if "label" in entry.inputs else None
    progress = Progress(f"dermagan sample {kind}", args.count - done)  # its rate: images drawn, not found
    todo = (s for s in seeds if not (folder / f"{kind}_{s}.png").exists())
    while chunk := list(itertools.islice(todo, BATCH)):  # in batches: memory stays flat for any --count
        out = engine.run(pipeline.generate_inputs(chunk, entry.z_dim or 0, label))
        for seed, png in zip(chunk, pipeline.finish_generate(out["image"])):
            write_whole(folder / f"{kind}_{seed}.png", png)
        progress.update(len(chunk))
    written = progress.done
    print(f"{kind}: {written} image{'' if written == 1 else 's'} by {entry.name} ({engine.provider}) "
          f"in {duration(time.monotonic() - t0)}" + (f"; {done} were there already" if done else "") + f" -> {folder}")
