"""The report of `dermagan evaluate`: issue 5's targets with pass/miss, mean/std over seeds, and
metrics.json / metrics.md rendering. Pure functions of the metric values (no models, no data)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dermagan.manifest import ModelEntry


@dataclass(frozen=True)
class Target:
    key: str
    op: str  # "<=", ">=", "<", ">"
    value: float | None = None  # absolute threshold, or
    ref: str | None = None  # another metric's mean ...
    factor: float = 1.0  # ... times this
    text: str = ""

    def check(self, means: dict[str, float]) -> dict:
        mean = means.get(self.key, float("nan"))
        threshold = self.value if self.ref is None else self.factor * means.get(self.ref, float("nan"))
        ok = {"<=": mean <= threshold, ">=": mean >= threshold, "<": mean < threshold, ">": mean > threshold}[self.op]
        known = math.isfinite(mean) and threshold is not None and math.isfinite(threshold)
        return {"metric": self.key, "rule": self.text, "mean": mean, "threshold": threshold,
                "result": ("pass" if ok else "miss") if known else "n/a"}


def targets_for(entry: ModelEntry) -> list[Target]:
    """The targets of issue 5 for one model (generate: per label)."""
    if entry.task == "generate":
        t = []
        for k in entry.labels:
            t += [Target(f"{k}.kid.inproj", "<=", ref=f"{k}.kid_floor_scale.inproj", factor=2,
                         text="KID ≤ 2x real-vs-real floor (max(floor, its std over subsets))"),
                  Target(f"{k}.coverage.inproj", ">=", 0.6, text="coverage ≥ 0.6"),
                  Target(f"{k}.c2st.inproj", "<=", 0.80, text="two-sample accuracy ≤ 0.80"),
                  # The classifier space is built to ignore within-class detail, so it calls distinct
                  # held-out images copies (floor ~3 % at n = 200); the random space keeps instance detail.
                  Target(f"{k}.copy_rate.random", "<", 0.05, text="copy rate < 5 % (random-init space)")]
        return t
    return {
        "add": [Target("segment.iou_relative", ">=", 0.7, text="relative mask IoU ≥ 0.7"),
                Target("outside.psnr", ">=", 35.0, text="raw output ≥ 35 dB outside the mask")],
        "remove": [Target("inside.psnr", ">", ref="inside.psnr.biharmonic", text="inside PSNR > biharmonic"),
                   Target("inside.ssim", ">", ref="inside.ssim.biharmonic", text="inside SSIM > biharmonic"),
                   Target("segment.area_reduction", ">=", 0.8, text="segmenter-positive area reduced ≥ 80 %")],
        # "Moved in the requested direction" = now classified as the target class. A mere change of
        # the score in that direction (moved_share) is no test: an untrained generator's noise lies
        # between the two classes and "moves" ~97 % of inputs both ways.
        "cycle-add": [Target("cycle.psnr", ">=", 28.0, text="cycle reconstruction ≥ 28 dB"),
                      Target("direction.target_share", ">=", 0.9, text="≥ 90 % now classified eczema")],
        "cycle-remove": [Target("cycle.psnr", ">=", 28.0, text="cycle reconstruction ≥ 28 dB"),
                         Target("direction.target_share", ">=", 0.9, text="≥ 90 % now classified healthy")],
    }.get(entry.task, [])


def summarise(per_seed: list[dict[str, float]]) -> dict[str, dict]:
    """key -> {"mean", "std", "values"} over seeds (NaN-free values only)."""
    out = {}
    for key in per_seed[0]:
        vals = [float(r.get(key, float("nan"))) for r in per_seed]
        fin = [v for v in vals if math.isfinite(v)]
        out[key] = {"mean": float(np.mean(fin)) if fin else float("nan"),
                    "std": float(np.std(fin)) if fin else float("nan"), "values": vals}
    return out


def json_safe(obj):
    """NaN / inf -> null, so metrics.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def target_rows(targets: list[dict]) -> list[str]:
    """The Markdown table of targets (header included): a mean is printed with as many digits as it
    takes to tell it from its threshold (0.7999 against 0.8, not 0.8 against 0.8)."""
    rows = ["| target | metric | mean | threshold | result |", "|---|---|---|---|---|"]
    for t in targets:
        mean, thr, digits = t["mean"], t["threshold"], 3
        while (digits < 8 and isinstance(mean, float) and isinstance(thr, float) and mean != thr
               and math.isfinite(mean) and math.isfinite(thr) and f"{mean:.{digits}g}" == f"{thr:.{digits}g}"):
            digits += 1
        shown = f"{mean:.{digits}g}" if digits > 3 else _fmt(mean)
        rows.append(f"| {t['rule']} | `{t['metric']}` | {shown} | {_fmt(thr)} | **{t['result']}** |")
    return rows


def render_markdown(doc: dict) -> str:
    s = doc["settings"]
    lines = [f"# dermagan evaluate — {doc['created']}", "",
             f"n = {s['n']} per set, {s['seeds']} evaluation seeds (mean ± std over seeds), "
             + (f"size {s['size']} px for dynamic models" if s['size'] is not None else "each model at its own resolution")
             + f"; inpainting baselines: {', '.join(s['inpainting_baselines'])}.",
             f"Split: training seeds {doc['split']['train_seeds']}; evaluation {doc['split']['eval_seeds']}. "
             "`_floor` = the same metric between two independent real sets of the same size.", "",
             "Feature spaces: " + "; ".join(f"`{k}` = {v['name']} ({v['input_size']} px"
                                            + (f", held-out accuracy {v['val_accuracy']:.3f}" if "val_accuracy" in v else "")
                                            + (f" ({v['val_accuracy_unseen_seeds']:.3f} on the {v['n_val_unseen_seeds']} "
                                               "held-out images of renderer seeds it never saw)"
                                               if v.get("val_accuracy_unseen_seeds") is not None else "") + ")"
                                            for k, v in doc["feature_spaces"].items()), "",
             "Reading the numbers: KID is unbiased, so a floor can be ≤ 0; the KID target then uses the floor's "
             "std over subsets as its scale. `copy_rate`: share of samples nearer a training sample than half that "
             "sample's own nearest-neighbour distance (training subset: the first n training seeds). "
             "`direction.*` uses the in-project classifier's eczema-vs-healthy logit: `target_share` = share now "
             "classified as the requested class (its floor: the classifier on the true targets), `moved_share` = share "
             "whose logit merely moved that way (noise does that too); read both next to `vs_truth.*` / `cycle.*`. PSNR is capped at 100 dB (identical pixels).",
             ""]
    if s.get("data"):
        lines[-1:-1] = [f"Photographs of `{s['data']}` (`--data`): no exact counterparts, so the metrics and targets "
                        "that need them are absent (n/a); `realism.*` compares the edited images with the folder's "
                        "real ones of the target class, and the CycleGAN's `direction.moved_share` is the share whose "
                        "segmenter-positive area moved the requested way (training/evaluate_photos.py).", ""]
    seg = s.get("segmenter")
    if seg:
        lines[-1:-1] = [f"Segmenter of the `segment.*` metrics: `{seg['name']}` from `{seg['folder']}` "
                        f"(sha256 {seg['sha256'][:12]}…).", ""]
    elif any(m["task"] in ("add", "remove", "cycle-add", "cycle-remove") for m in doc["models"].values()):
        lines[-1:-1] = ["No segmenter: the edit models' `segment.*` metrics are absent and their targets n/a "
                        "(`dermagan evaluate --segmenter DIR` names a models folder with one).", ""]
    for name, m in doc["models"].items():
        lines += [f"## {name} ({m['task']}, v{m['version']}, {m['resolution'][0]}x{m['resolution'][1]})", ""]
        if m.get("skipped_labels"):
            lines += [f"Not evaluated: {', '.join(f'`{k}`' for k in m['skipped_labels'])} (not a kind of the procedural "
                      "renderer, so no held-out counterpart here; `dermagan evaluate --data DIR` evaluates them on "
                      "held-out photographs of those classes).", ""]
        if m["targets"]:
            lines += target_rows(m["targets"])
            lines.append("")
        lines += ["| metric | mean ± std | real-vs-real floor |", "|---|---|---|"]
        metrics = m["metrics"]
        for key, v in metrics.items():
            if "_floor" in key:
                continue
            group, _, rest = key.partition(".")
            metric, _, space = rest.partition(".")
            floor = metrics.get(f"{group}.{metric}_floor" + (f".{space}" if space else ""))
            fl = f"{_fmt(floor['mean'])} ± {_fmt(floor['std'])}" if floor else ""
            lines.append(f"| `{key}` | {_fmt(v['mean'])} ± {_fmt(v['std'])} | {fl} |")
        lines.append("")
    return "\n".join(lines)


#: the lines of a `dermagan evaluate` summary that must agree before sections of two runs sit side by side
_SETTINGS_PREFIXES = ("n = ", "Split: ", "Feature spaces: ")


def _sections(md: str) -> tuple[list[str], dict[str, list[str]]]:
    """(header lines, model name -> its section's lines) of a `dermagan evaluate` Markdown summary."""
    header: list[str] = []
    sections: dict[str, list[str]] = {}
    current = header
    for line in md.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].split(" (")[0], [])
        current.append(line)
    return header, sections


def merge_markdown(summary: str, later: str, names: list[str]) -> str | None:
    """`summary` (a `render_markdown` document, e.g. models/EVALUATION.md) with the sections of `names` taken from `later` (the metrics.md of
    a later `dermagan evaluate` of just those models), each in its place (new ones at the end), and a
    line per model in the header naming the run it now comes from. None when the two were measured
    with different settings, so their numbers would not compare."""
    head, sections = _sections(summary)
    later_head, later_sections = _sections(later)
    for prefix in _SETTINGS_PREFIXES:
        if [x for x in head if x.startswith(prefix)] != [x for x in later_head if x.startswith(prefix)]:
            return None
    created = later_head[0].rpartition("— ")[2].strip() if later_head else "?"
    names = [n for n in names if n in later_sections]
    for name in names:
        sections[name] = later_sections[name]
    mark = "- Updated: the "
    kept = [x for x in head if x.startswith(mark) and not any(x.startswith(f"{mark}{n} section ") for n in names)]
    head = [x for x in head if not x.startswith(mark)]
    while head and not head[-1].strip():
        head.pop()
    notes = kept + [f"{mark}{n} section comes from a later run with the same settings and split ({created})."
                    for n in names]
    lines = head + [""] + (notes + [""] if notes else [])
    for body in sections.values():
        while body and not body[-1].strip():
            body = body[:-1]
        lines += body + [""]
    return "\n".join(lines).rstrip("\n") + "\n"
