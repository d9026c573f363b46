"""Model cards (`models/NAME.md`) from a manifest and the metrics.json of `dermagan evaluate`.

A card says what a model is for and what it is not for, how it was trained (the exact command),
and how good it is on held-out procedural data, target by target, with the misses stated.
The headline numbers are also copied into the manifest entry's `metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from dermagan.manifest import ModelEntry, load_manifest, manifest_lock, save_manifest
from dermagan.training.metrics.report import target_rows

WHAT = {
    "generate": "draws new images of a kind ({labels}) from noise, for data augmentation",
    "add": "adds eczema to healthy skin inside a given mask (white = where to add)",
    "remove": "removes eczema from skin inside a given mask (white = the eczema)",
    "cycle-add": "adds eczema to a whole image without a mask (CycleGAN healthy → eczema)",
    "cycle-remove": "removes eczema from a whole image without a mask (CycleGAN eczema → healthy)",
    "segment": "predicts the eczema mask of an image (logits; > 0 = eczema)",
}

ENDPOINT = {
    "generate": "POST /generate", "add": "POST /eczema/add (image + mask)",
    "remove": "POST /eczema/remove (image + mask)", "cycle-add": "POST /eczema/add (image only)",
    "cycle-remove": "POST /eczema/remove (image only)", "segment": "POST /eczema/segment",
}

#: How to retrain the family on one's own data (the loaders of training/data.py).
REAL_DATA = {
    "generate": "dermagan train generate --preset modern --data YOUR_FOLDER --size 128 --out runs/generate-real  "
                "# YOUR_FOLDER/<class>/*.png (ISIC-style class folders), HAM10000's or ISIC's labels CSV, or a flat folder",
    "add": "dermagan train add --preset modern --data YOUR_FOLDER --unpaired --out runs/add-real  "
           "# YOUR_FOLDER/image/NAME_image.png + patho/NAME_patho.png; healthy skin = images with an all-black "
           "mask (+ healthy/, any names)",
    "remove": "dermagan train remove --preset modern --data YOUR_FOLDER --unpaired --out runs/remove-real  "
              "# the same layout as add",
    "cycle-add": "dermagan train cycle --preset modern --data YOUR_FOLDER --out runs/cycle-real  "
                 "# the layout of add: eczema = non-empty masks, healthy = empty masks + healthy/",
    "cycle-remove": "dermagan train cycle --preset modern --data YOUR_FOLDER --out runs/cycle-real  "
                    "# the layout of add: eczema = non-empty masks, healthy = empty masks + healthy/",
    "segment": "dermagan train segment --preset modern --data YOUR_FOLDER --out runs/segment-real",
}


#: ... and how to measure the retrained model on held-out photographs (training/evaluate_photos.py).
EVALUATE_REAL = ("dermagan export runs/RUN --out my-models/ && dermagan evaluate --models my-models/ "
                 "--data YOUR_HELDOUT_FOLDER --out eval-real  # photographs it has not seen, same layout")


def _fmt(x: float | None) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    return f"{x:.3g}"


#: after a cpu-trained card's missed targets: what was not measured is not promised
_CPU_MISS = (" The model was trained on a 2-core CPU budget (see the recipe); the `gpu` profile trains wider "
             "networks on more data for longer, and has not been run end to end yet.")


def card(entry: ModelEntry, result: dict | None, profile: str, note: str = "") -> str:
    labels = ", ".join(entry.labels)
    lines = [
        f"# {entry.name} — model card", "",
        f"**Task** `{entry.task}`: {WHAT[entry.task].format(labels=labels)}. Served at `{ENDPOINT[entry.task]}`.",
        f"File `{entry.file}` (sha256 `{entry.sha256[:16]}…`), version {entry.version}, "
        f"{entry.resolution[0]}x{entry.resolution[1]} px"
        + (f", any H and W that are multiples of {entry.size_multiple}" if entry.dynamic_hw else "") + ".", "",
        "## Data", "",
        f"Trained on **{entry.trained_on or 'unknown'}**: dermagan's procedural renderer "
        "(training/synth/, specified in docs/SYNTHETIC_DATA.md), renderer seeds [0, 10^6). No real photographs.", "",
        "## Recipe", "",
        "Trained by `dermagan release --profile " + profile + "` (training/release.py), which ran:", "",
        "```", entry.recipe or "(not recorded)", "```", "",
        *([note, ""] if note else []),
        "## Metrics (held-out procedural data)", "",
    ]
    if result is None:
        lines += ["Not evaluated yet: run `dermagan evaluate --models models/ --out eval/`.", ""]
    else:
        if result["targets"]:
            lines += target_rows(result["targets"])
            misses = [t for t in result["targets"] if t["result"] == "miss"]
            lines += ["", f"{len(result['targets']) - len(misses)} of {len(result['targets'])} targets met."
                      + (" Missed targets are stated as measured." + (_CPU_MISS if profile == "cpu" else "")
                         if misses else ""), ""]
        lines += ["<details><summary>all metrics (mean ± std over evaluation seeds)</summary>", "",
                  "| metric | mean ± std |", "|---|---|"]
        lines += [f"| `{k}` | {_fmt(v['mean'])} ± {_fmt(v['std'])} |" for k, v in result["metrics"].items()]
        lines += ["", "</details>", ""]
    lines += [
        "## Intended use", "",
        "Data augmentation for dermatology ML research, method development, demonstrations and aesthetic "
        "previews of what eczema or its absence could look like.", "",
        "## Limits", "",
        "- Trained on **procedural** images only; it has never seen a real photograph and will behave "
        "unpredictably on one. Retrain on real, properly licensed data for real use:",
        "", "  ```", "  " + REAL_DATA[entry.task], "  " + EVALUATE_REAL, "  ```", "",
        "- **Not diagnostic.** Its outputs are synthetic; they must not be used to diagnose anyone or be "
        "presented as photographs of real patients. Melanoma-like images are look-alikes, not medical data.",
        "- Skin-tone coverage follows the renderer's six ITA categories; real-data performance across "
        "Fitzpatrick types is unknown.", "",
    ]
    return "\n".join(lines)


def headline(result: dict | None) -> dict[str, float]:
    """The target metrics' means, for the manifest entry (GET /v1/models shows them); for a model with no
    targets (the segmenter), all its metrics' means."""
    if not result:
        return {}
    means = ([(t["metric"], t["mean"]) for t in result["targets"]] if result["targets"]
             else [(k, v["mean"]) for k, v in result["metrics"].items()])
    return {k: float(v) for k, v in means if isinstance(v, (int, float)) and math.isfinite(v)}


def write_cards(models_dir: Path, metrics_doc: dict, profile: str, note: str = "",
                notes: Mapping[str, str] | None = None) -> list[Path]:
    """Write MODELS/NAME.md for every model evaluated in `metrics_doc` (and a "not evaluated yet" card
    for a model that has none) and copy the headline metrics into the manifest. `note` goes into
    every card written, `notes[NAME]` into NAME's card only (e.g. how far its run got).

    The manifest is read, updated and saved under its lock, so an export into the folder meanwhile keeps
    its entry; a model whose file changed since it was evaluated (another sha256) gets no metrics or
    card from that evaluation."""
    paths = []
    with manifest_lock(models_dir):
        manifest = load_manifest(models_dir)
        for entry in list(manifest.models):
            result = metrics_doc.get("models", {}).get(entry.name)
            if result is not None and result.get("sha256", entry.sha256) != entry.sha256:
                print(f"cards: {entry.name}: {entry.file} changed since it was evaluated; its card is left as it is")
                continue
            path = Path(models_dir) / f"{entry.name}.md"
            if result is None and path.exists():
                continue  # not evaluated this time: its card (and its metrics) stay as they are
            if result is not None:
                entry = entry.model_copy(update={"metrics": headline(result)})
                manifest.upsert(entry)
            own = " ".join(n for n in (note, (notes or {}).get(entry.name, "")) if n)
            path.write_text(card(entry, result, profile, own), encoding="utf-8")
            paths.append(path)
        save_manifest(models_dir, manifest)
    return paths
