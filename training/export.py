"""`dermagan export RUN --out models/`: a trained run -> ONNX files + manifest entries, parity-checked.

Each `Exportable` of the run (see docs/INTERFACES.md) becomes one self-contained `NAME.onnx`
(eval mode, weights inside the file, dynamic batch axis, dynamic H/W where the network allows,
the entry's facts in `metadata_props`) and one entry of `OUT/manifest.json`.

Nothing is written unless every model of the run passes all checks in ONNX Runtime:
- `onnx.checker` (full check) and the graph's input/output names against the contract;
- parity: max |ORT - PyTorch| <= 1e-4 at batch 1 and 3 (and at a second H/W where dynamic);
- batch invariance: a sample run alone and inside a batch of 3 with different neighbours gives
  the same output (catches BatchNorm using batch statistics -- the classic "wrong ONNX output" of
  pix2pix/CycleGAN exports);
- the output shape the contract promises.

Writing is all or nothing too (`swap_in`): a re-export that fails on the way (a full disk) leaves the
folder's old files and manifest as they were, so what it served before still loads.

A name the folder's manifest already has is refused unless `--replace` (`refuse_replacing`), before any export
work and again under the folder's lock: the default names come from the run's family, not its folder (every
`add` run of eczema is `eczema-add`), so a plain `dermagan export RUN` into `models/` once replaced the shipped
128 px model with a 32 px toy, exit 0, "wrote ...". `dermagan release` passes `--replace`: it re-exports the
shipped models over their previous versions on purpose.

A checkpoint short of the run's configured steps (a run stopped early, or `--step`/`--best` before its end) is
exported with a note, and its entry's recipe ends in `# exported at step S of N` (`annotate_step`): the recipe
alone (`... --steps 2000 ...`) said the model had all 2000 steps.

Exporter, measured with torch 2.13: the dynamo exporter (`dynamo=True, external_data=False`) gives
a clean graph (BatchNorm folded, ~4x fewer nodes than the TorchScript exporter on a ResNet/U-Net
generator) and reliable dynamic N/H/W via `Dim.AUTO`; it emits opset 18 and cannot go lower (ONNX's
version converter has no Pad-18 -> 17 adapter). `--opset 17` therefore uses the TorchScript exporter
(`dynamo=False`), which targets 17 natively; both paths go through the same checks.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import onnx
import onnxruntime as ort
import torch
from pydantic import ValidationError

import dermagan
from dermagan.manifest import (
    MANIFEST_NAME,
    NAME_PATTERN,
    TASK_INPUTS,
    TASK_OUTPUTS,
    Manifest,
    ManifestError,
    ModelEntry,
    TensorSpec,
    check_labels,
    graph_output_names,
    load_manifest,
    manifest_lock,
    metadata_props,
    save_manifest,
    sync_folder,
    write_synced,
)

#: Largest max |ORT - PyTorch| accepted, at every checked batch size and shape.
PARITY_ATOL = 1e-4
OPSETS = (17, 18)
DEFAULT_OPSET = 18
_MAX_BATCH = 4096
_PLACEHOLDER_SHA = "0" * 64


class ExportError(ValueError):
    """A model was refused (or the run cannot be exported); nothing was written."""


class Exportable(Protocol):
    """What `dermagan.training.checkpoint.load_exportables` returns (docs/INTERFACES.md)."""

    task: str
    name: str
    module: torch.nn.Module
    example_inputs: Mapping[str, torch.Tensor]
    facts: Mapping[str, Any]


@dataclass(frozen=True)
class Prepared:
    """A model that passed every check, held in memory until the whole run has passed."""

    entry: ModelEntry
    onnx_bytes: bytes
    max_abs_diff: float


# ----------------------------------------------------------------------------- contract


def graph_input_names(task: str, facts: Mapping[str, Any]) -> tuple[str, ...]:
    """The ONNX input names, in the module's forward order."""
    names = TASK_INPUTS[task]
    if task == "generate" and len(facts.get("labels") or ()) > 1:
        names = (*names, "label")
    return names


def tensor_specs(task: str, facts: Mapping[str, Any]) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """The manifest's inputs/outputs (keyed by the contract's names)."""
    h, w = facts["resolution"]
    hw: list[int | str] = ["H", "W"] if facts.get("dynamic_hw") else [int(h), int(w)]
    image = TensorSpec(dtype="float32", shape=["N", 3, *hw], range="[-1, 1]")
    specs = {
        "image": image,
        "mask": TensorSpec(dtype="float32", shape=["N", 1, *hw], range="{0, 1}"),
        "z": TensorSpec(dtype="float32", shape=["N", int(facts.get("z_dim") or 0)], range="N(0, I)"),
        "label": TensorSpec(dtype="int64", shape=["N"], range=f"[0, {len(facts.get('labels') or ())})"),
        "mask_logits": TensorSpec(dtype="float32", shape=["N", 1, *hw], range="logits (sigmoid > 0.5 = eczema)"),
    }
    if task == "generate":
        specs["image"] = TensorSpec(dtype="float32", shape=["N", 3, int(h), int(w)], range="[-1, 1]")
    inputs = {n: specs[n] for n in graph_input_names(task, facts)}
    outputs = {n: specs[n] for n in TASK_OUTPUTS[task]}
    return inputs, outputs


def build_entry(exportable: Exportable, name: str, opset: int, sha256: str = _PLACEHOLDER_SHA) -> ModelEntry:
    facts = exportable.facts
    inputs, outputs = tensor_specs(exportable.task, facts)
    try:
        return ModelEntry(
            name=name, task=exportable.task, version=str(facts.get("version", "1")), file=f"{name}.onnx",
            sha256=sha256, resolution=tuple(facts["resolution"]), size_multiple=int(facts.get("size_multiple", 1)),
            dynamic_hw=bool(facts.get("dynamic_hw", False)), z_dim=facts.get("z_dim"),
            labels=list(facts.get("labels") or []), inputs=inputs, outputs=outputs, opset=opset,
            trained_on=str(facts.get("trained_on", "")), recipe=str(facts.get("recipe", "")),
            metrics=dict(facts.get("metrics") or {}),
            created=str(facts.get("created") or datetime.now(timezone.utc).replace(microsecond=0).isoformat()),
            dermagan_version=dermagan.__version__,
        )
    except (ValidationError, KeyError) as e:
        raise ExportError(f"{name}: its facts do not make a valid manifest entry: {e}") from e


# ----------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warnings (e.g. 'torchvision is not installed') we do not need."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def to_onnx(module: torch.nn.Module, example_inputs: Mapping[str, torch.Tensor], input_names: tuple[str, ...],
            output_names: tuple[str, ...], dynamic_hw: bool, opset: int) -> onnx.ModelProto:
    """Export `module` (already in eval mode) with a dynamic batch axis (+ H/W when `dynamic_hw`)."""
    args = tuple(example_inputs[n] for n in input_names)
    spatial = [dynamic_hw and a.dim() == 4 for a in args]
    with _quiet(), torch.no_grad():
        if opset >= 18:
            from torch.export import Dim

            batch = Dim("N", min=1, max=_MAX_BATCH)
            shapes = tuple({0: batch, 2: Dim.AUTO, 3: Dim.AUTO} if s else {0: batch} for s in spatial)
            program = torch.onnx.export(module, args, input_names=list(input_names), output_names=list(output_names),
                                        dynamic_shapes=shapes, dynamo=True, external_data=False,
                                        opset_version=opset, optimize=True, verbose=False)
            model = program.model_proto
        else:
            axes = {n: ({0: "N", 2: "H", 3: "W"} if s else {0: "N"}) for n, s in zip(input_names, spatial)}
            for n in output_names:
                axes[n] = {0: "N", 2: "H", 3: "W"} if any(spatial) else {0: "N"}
            buf = io.BytesIO()
            torch.onnx.export(module, args, buf, input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=axes, dynamo=False, opset_version=opset, do_constant_folding=True)
            model = onnx.load_from_string(buf.getvalue())
    _name_dynamic_axes(model, dynamic_hw)
    strip_provenance(model)
    return model


#: what the exporters write about where each node and value came from: the Python stack (file paths of this
#: checkout and its virtual environment, line numbers), FX node text, module names, rewrite rules
_PROVENANCE_PREFIXES = ("pkg.", "namespace")


def strip_provenance(model: onnx.ModelProto) -> None:
    """Drop the exporters' per-node and per-value provenance metadata, in place. It names the exporting machine's
    paths (`/home/you/dermagan/training/networks/...`) and source lines, so without this the same weights exported
    from another checkout, or after an unrelated edit that moves a line, gave other bytes and another sha256. The
    model-level metadata_props (the manifest facts) are kept."""
    def clean(props) -> None:  # a repeated StringStringEntryProto field
        keep = [(e.key, e.value) for e in props if not e.key.startswith(_PROVENANCE_PREFIXES)]
        del props[:]
        for key, value in keep:
            props.add(key=key, value=value)

    def graph(g: onnx.GraphProto) -> None:
        clean(g.metadata_props)
        for value in (*g.input, *g.output, *g.value_info, *g.initializer):
            clean(value.metadata_props)
        for node in g.node:
            clean(node.metadata_props)
            for attr in node.attribute:
                if attr.HasField("g"):
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)

    graph(model.graph)
    for function in model.functions:
        for node in function.node:
            clean(node.metadata_props)


def _name_dynamic_axes(model: onnx.ModelProto, dynamic_hw: bool) -> None:
    """Give the graph's symbolic axes the contract's names N, H, W (the dynamo exporter says s0, s1...)."""
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if i == 0:
                d.dim_param = "N"
            elif dynamic_hw and len(dims) == 4 and i in (2, 3) and not d.HasField("dim_value"):
                d.dim_param = "HW"[i - 2]


def _sample_inputs(exportable: Exportable, batch: int, gen: torch.Generator, hw: tuple[int, int] | None = None,
                   scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Random contract-valid inputs: images in [-1, 1], binary masks, z ~ N(0, I), valid labels."""
    out = {}
    for name in graph_input_names(exportable.task, exportable.facts):
        ex = exportable.example_inputs[name]
        shape = [batch, *ex.shape[1:]]
        if hw is not None and ex.dim() == 4:
            shape[2:] = hw
        if name == "mask":
            out[name] = (torch.rand(shape, generator=gen) > 0.5).float()
        elif name == "label":
            out[name] = torch.randint(0, len(exportable.facts["labels"]), shape, generator=gen)
        elif name == "z":
            out[name] = torch.randn(shape, generator=gen) * scale
        else:
            out[name] = ((torch.rand(shape, generator=gen) * 2 - 1) * scale).clamp(-1, 1)
    return out


def _expected_shape(exportable: Exportable, feed: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    n = next(iter(feed.values())).shape[0]
    if exportable.task == "generate":
        return (n, 3, *exportable.facts["resolution"])
    h, w = feed["image"].shape[2:]
    return (n, 1 if exportable.task == "segment" else 3, h, w)


def check_onnx(model_bytes: bytes, exportable: Exportable, *, seed: int = 0) -> float:
    """Run every check on the serialised model; return the largest parity difference, or raise ExportError."""
    name, task, facts = exportable.name, exportable.task, exportable.facts
    try:
        onnx.checker.check_model(onnx.load_from_string(model_bytes), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{name}: onnx.checker rejects the graph: {e}") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # deterministic, and no spinning threads on a shared machine
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    want_in, want_out = graph_input_names(task, facts), graph_output_names(task)
    got_in = tuple(i.name for i in session.get_inputs())
    got_out = tuple(o.name for o in session.get_outputs())
    if got_in != want_in or got_out != want_out:
        raise ExportError(f"{name}: graph has inputs {got_in} and outputs {got_out}; the contract for "
                          f"task {task!r} wants inputs {want_in} and outputs {want_out}")

    def run_ort(feed: Mapping[str, torch.Tensor]) -> np.ndarray:
        return session.run(None, {k: v.numpy() for k, v in feed.items()})[0]

    def run_torch(feed: Mapping[str, torch.Tensor]) -> np.ndarray:
        with torch.no_grad():
            return exportable.module(*feed.values()).float().numpy()

    gen = torch.Generator().manual_seed(seed)
    batch3 = _sample_inputs(exportable, 3, gen)
    feeds = {"batch 1": {k: v[:1] for k, v in batch3.items()}, "batch 3": batch3}
    if facts.get("dynamic_hw"):
        h, w = facts["resolution"]
        m = int(facts.get("size_multiple", 1))
        feeds[f"batch 2 at {h + m}x{w + 2 * m}"] = _sample_inputs(exportable, 2, gen, hw=(h + m, w + 2 * m))
    worst = 0.0
    outputs = {}
    for label, feed in feeds.items():
        try:
            got = run_ort(feed)
        except Exception as e:  # ORT raises its own exception types (shape errors, ...)
            raise ExportError(f"{name}: ONNX Runtime fails at {label}: {e}") from e
        want_shape = _expected_shape(exportable, feed)
        if tuple(got.shape) != want_shape:
            raise ExportError(f"{name}: output shape {tuple(got.shape)} at {label}, expected {want_shape}")
        diff = float(np.abs(got - run_torch(feed)).max())
        if not diff <= PARITY_ATOL:  # also catches NaN
            raise ExportError(f"{name}: ONNX Runtime output differs from PyTorch by {diff:.3g} (max abs) at "
                              f"{label}; the limit is {PARITY_ATOL:g}")
        worst = max(worst, diff)
        outputs[label] = got

    # Batch invariance: sample 0 alone vs the same sample between two neighbours of other statistics.
    neighbours = _sample_inputs(exportable, 2, gen, scale=0.3)
    mixed = {k: torch.cat([neighbours[k][:1], batch3[k][:1], neighbours[k][1:]]) for k in batch3}
    alone, inside = outputs["batch 1"][0], run_ort(mixed)[1]
    diff = float(np.abs(alone - inside).max())
    if not diff <= PARITY_ATOL:
        raise ExportError(f"{name}: the output for one image depends on the other images in its batch "
                          f"(max abs change {diff:.3g}); typically BatchNorm using batch statistics "
                          f"(train mode or track_running_stats=False) -- export needs per-sample inference")
    return worst


def prepare(exportable: Exportable, name: str | None = None, opset: int = DEFAULT_OPSET) -> Prepared:
    """Export one model to ONNX bytes with its manifest entry and check it; writes nothing."""
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported; choose one of {list(OPSETS)}")
    if exportable.task not in TASK_INPUTS:
        raise ExportError(f"{exportable.name}: unknown task {exportable.task!r}; valid tasks are {list(TASK_INPUTS)}")
    name = name or exportable.name
    facts = exportable.facts
    exportable.module.eval()
    missing = set(graph_input_names(exportable.task, facts)) - set(exportable.example_inputs)
    if missing:
        raise ExportError(f"{name}: example_inputs lacks {sorted(missing)}")
    if exportable.task == "generate":
        try:
            check_labels(list(facts.get("labels") or []))
        except ValueError as e:  # before the exporter's work, and without pydantic's wording
            raise ExportError(f"{name}: {e}") from e
    entry = build_entry(exportable, name, opset)
    try:
        model = to_onnx(exportable.module, exportable.example_inputs, graph_input_names(exportable.task, facts),
                        graph_output_names(exportable.task), bool(facts.get("dynamic_hw")), opset)
    except Exception as e:  # the exporters raise many unrelated types
        raise ExportError(f"{name}: the ONNX exporter failed: {type(e).__name__}: {str(e)[:2000]}") from e
    model.producer_name = "dermagan"
    model.producer_version = dermagan.__version__
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata_props(entry))
    data = model.SerializeToString()
    worst = check_onnx(data, exportable)
    entry = entry.model_copy(update={"sha256": hashlib.sha256(data).hexdigest()})
    return Prepared(entry=entry, onnx_bytes=data, max_abs_diff=worst)


def existing_manifest(out_dir: Path) -> Manifest:
    """The manifest the new entries join (checked before any export work is done)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: not a folder (--out names the models folder that gets NAME.onnx and {MANIFEST_NAME})")
    if not (out_dir / MANIFEST_NAME).exists():
        return Manifest()
    try:
        return load_manifest(out_dir, verify=False)
    except ManifestError as e:
        raise ExportError(f"cannot add to the existing manifest: {e}") from e


def describe(entry: ModelEntry) -> str:
    """An existing manifest entry in the words that tell one model of a name from another: its task, version,
    resolution, file, and where it came from (data, date, recipe) as far as the entry says."""
    h, w = entry.resolution
    facts = [entry.task, f"version {entry.version}", f"{h}x{w} px", f"file {entry.file}",
             *([f"trained on {entry.trained_on}"] if entry.trained_on else []),
             *([f"created {entry.created}"] if entry.created else []),
             *([f"recipe `{entry.recipe}`"] if entry.recipe else [])]
    return f"{entry.name!r} ({', '.join(facts)})"


def refuse_replacing(out_dir: Path, manifest: Manifest, names: list[str]) -> None:
    """Raise ExportError when `manifest` (the one in `out_dir`) already has a model of one of `names`:
    replacing it takes `--replace` (`replace=True`). The message names what would be lost and both ways out."""
    taken = [m for m in manifest.models if m.name in names]
    if not taken:
        return
    one = len(taken) == 1
    prefix = " (with several models per run OTHER is their prefix: OTHER-cycle-add, ...)" if len(names) > 1 else ""
    raise ExportError(
        f"{out_dir / MANIFEST_NAME} already has {'a model' if one else 'models'} of the name{'' if one else 's'} "
        f"this export would write: {'; '.join(describe(m) for m in taken)}. Nothing is replaced without being asked: "
        f"pass --name OTHER to export beside {'it' if one else 'them'}{prefix}, or --replace to replace "
        f"{'it' if one else 'them'} (file and entry, kept in place in the manifest's order)")


def write(out_dir: Path | str, prepared: list[Prepared], default: bool = False,
          replace: bool = False) -> list[ModelEntry]:
    """Write the checked files and upsert their entries into the manifest, all or nothing (`swap_in`);
    `default`: each before the other models of its task, so that it serves the task. A name the manifest
    already has is refused unless `replace` (checked again here, under the lock: another export may have
    written that name since `export_models` looked)."""
    out_dir = Path(out_dir)
    names = [p.entry.name for p in prepared]
    if len(set(names)) != len(names):
        raise ExportError(f"two models would get the same name: {names}; pass --name")
    out_dir.mkdir(parents=True, exist_ok=True)
    with manifest_lock(out_dir):  # another export into this folder at the same time waits here
        manifest = existing_manifest(out_dir)
        if not replace:
            refuse_replacing(out_dir, manifest, names)
        for p in prepared:
            manifest.upsert(p.entry)
            if default:
                manifest.make_default(p.entry.name)
        swap_in(out_dir, {p.entry.file: p.onnx_bytes for p in prepared}, lambda: save_manifest(out_dir, manifest))
    return [p.entry for p in prepared]


def swap_in(out_dir: Path, files: Mapping[str, bytes], commit: Callable[[], object]) -> None:
    """Put `files` (name -> bytes) into `out_dir` and then run `commit` (the manifest's atomic save), so that
    the folder holds either its old files and old manifest or the new ones, whatever fails on the way (a full
    disk, an interrupt): every file is first written and fsynced under a temporary name; only then is each
    renamed over its old file (kept as a hard link until the end); if a rename or `commit` fails, the old
    files are put back (a new name's file removed) and the error raised. A file is never missing, and once
    `commit` has returned nothing is undone.

    (A reader that looks between the renames and `commit` -- a few milliseconds -- still sees a new file
    with the old manifest's sha256; `load_manifest` then refuses the folder rather than serving a mix.)"""
    tag = os.getpid()
    staged: dict[str, Path] = {}
    replaced: dict[str, Path | None] = {}  # name -> the old file's hard link (None: there was none)
    try:
        for name, data in files.items():
            staged[name] = out_dir / f".{name}.tmp-{tag}"
            write_synced(staged[name], data)
        try:
            for name, tmp in staged.items():
                final, old = out_dir / name, out_dir / f".{name}.old-{tag}"
                if final.exists():
                    old.unlink(missing_ok=True)
                    try:
                        os.link(final, old)  # the old bytes stay reachable; `final` never goes missing
                    except OSError:  # a file system without hard links: moved aside (missing a moment)
                        final.replace(old)
                    replaced[name] = old
                else:
                    replaced[name] = None
                tmp.replace(final)
            commit()
        except BaseException:
            for name, old in replaced.items():  # undo: the old files back in place
                if old is None:
                    (out_dir / name).unlink(missing_ok=True)
                else:
                    old.replace(out_dir / name)
            raise
        sync_folder(out_dir)
    finally:
        for path in (*staged.values(), *(p for p in replaced.values() if p is not None)):
            path.unlink(missing_ok=True)


def model_name(text: str) -> str:
    """`text` as a model name (NAME_PATTERN): a run's own name can hold a generator's label, which may be
    upper case or have spaces ("MEL-generate", "atopic dermatitis-generate"): lower-cased, each run of
    other characters one "-". A name that already is one is kept as it is."""
    if re.fullmatch(NAME_PATTERN, text):
        return text
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).lstrip("._-") or "model"


def _names(exportables: list[Exportable], name: str | None) -> list[str]:
    if name is None:
        return [model_name(e.name) for e in exportables]
    if len(exportables) == 1:
        return [name]
    return [f"{name}-{model_name(e.name)}" for e in exportables]


def export_models(exportables: list[Exportable], out_dir: Path | str, name: str | None = None,
                  opset: int = DEFAULT_OPSET, default: bool = False, replace: bool = False) -> list[ModelEntry]:
    """Check all, then write all: one refused model means nothing of the run is written. A name `out_dir`'s
    manifest already has is refused before any export work unless `replace`."""
    manifest = existing_manifest(Path(out_dir))
    names = _names(exportables, name)
    for n in names:
        if not re.fullmatch(NAME_PATTERN, n):
            raise ExportError(f"model name {n!r}: a name is lower-case letters, digits, '.', '_' and '-', starting with "
                              "a letter or digit (--name)")
    if not replace:
        refuse_replacing(Path(out_dir), manifest, names)
    prepared = [prepare(e, n, opset) for e, n in zip(exportables, names)]
    return write(out_dir, prepared, default, replace)


def export_model(exportable: Exportable, out_dir: Path | str, name: str | None = None,
                 opset: int = DEFAULT_OPSET, replace: bool = False) -> ModelEntry:
    """Export one model into `out_dir` (NAME.onnx + its manifest entry); raise ExportError if refused."""
    return export_models([exportable], out_dir, name, opset, replace=replace)[0]


def configured_steps(run_dir: Path) -> int | None:
    """The steps the run is configured to train (`RUN/config.json`, as a `--resume --steps N` last set them),
    or None where the folder does not say."""
    try:
        return int(json.loads((run_dir / "config.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def annotate_step(exportables: list[Exportable], steps: int | None) -> int | None:
    """Where the checkpoint's step is short of the run's configured `steps`, end each model's recipe with
    `# exported at step S of N` (a shell comment: the recipe still runs as it stands), so that the manifest
    entry and the ONNX file's metadata say which weights these are; return that step, else None. The recipe
    (`... --steps 2000 ...`) alone said a model of step 407 had all 2000. (In the recipe rather than a field of
    its own: `ModelEntry` forbids unknown fields, so a new one would make a service of before refuse the
    manifest; the recipe is what the model cards and GET /v1/models already show.)"""
    step = exportables[0].facts.get("step")
    if step is None or steps is None or int(step) >= steps:
        return None
    for e in exportables:
        recipe = str(e.facts.get("recipe") or "")
        e.facts["recipe"] = f"{recipe}{'  ' if recipe else ''}# exported at step {step} of {steps}"
    return int(step)


def export_run(run_dir: Path | str, out_dir: Path | str, name: str | None = None,
               opset: int = DEFAULT_OPSET, weights: str = "ema", step: int | None = None,
               default: bool = False, best: bool = False, replace: bool = False,
               note: Callable[[str], object] | None = None) -> list[ModelEntry]:
    """Export every model of a training run folder (from its last checkpoint, or the one kept at `step`).
    `note` gets a line when that checkpoint is short of the run's configured steps (see `annotate_step`)."""
    from dermagan.training.checkpoint import load_exportables

    run_dir = Path(run_dir)
    if run_dir.is_file() and run_dir.suffix == ".pt":
        raise ExportError(f"{run_dir}: RUN is the run folder that holds checkpoints/, not a checkpoint file; choose a "
                          "kept checkpoint with --step N or --best")
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run folder")
    exportables = list(load_exportables(run_dir, weights, step, best))
    if not exportables:
        raise ExportError(f"{run_dir}: the run has nothing to export")
    steps = configured_steps(run_dir)
    at = annotate_step(exportables, steps)
    if at is not None and note is not None:
        if step is None and not best:
            family = exportables[0].facts.get("family") or "FAMILY"
            note(f"{run_dir} is at step {at} of {steps} (unfinished): exporting step {at}; its entry's recipe says "
                 f"so. `dermagan train {family} --out {run_dir} --resume` continues the run")
        else:
            note(f"exporting {run_dir}'s checkpoint of step {at} ({'--best' if best else f'--step {step}'}), short of "
                 f"the run's {steps} steps; its entry's recipe says so")
    return export_models(exportables, out_dir, name, opset, default, replace)


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, metavar="RUN", help="training run folder (holds checkpoints/last.pt)")
    parser.add_argument("--out", type=Path, default=Path("models"), help="models folder to write NAME.onnx and "
                        "manifest.json into (default: models)")
    parser.add_argument("--name", default=None,
                        help="model name (default: the name the run's family gives its model, not the run folder's: "
                             "KIND-add, KIND-remove, KIND-segment with KIND the run's first --kinds, eczema for --data "
                             "runs, e.g. eczema-add; generate: LABEL-generate for one label, else generate; cycle: "
                             "cycle-add and cycle-remove). With several models per run NAME becomes a prefix, e.g. "
                             "NAME-cycle-add. A name the folder's manifest already has is refused unless --replace")
    parser.add_argument("--replace", action="store_true",
                        help="replace the folder's model(s) of the same name (ONNX file and manifest entry, kept in "
                             "place in the manifest's order); without it such an export is refused and nothing written")
    parser.add_argument("--opset", type=int, choices=OPSETS, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}; 17 uses the TorchScript exporter)")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema",
                        help="the generator's EMA copy where the run kept one (default), or its trained weights")
    parser.add_argument("--step", type=int, default=None,
                        help="export the checkpoint kept at this step (checkpoints/step_XXXXXXX.pt) instead of the last")
    parser.add_argument("--best", action="store_true",
                        help="export checkpoints/best.pt: the step with the best validation score (--val-every)")
    parser.add_argument("--default", action="store_true",
                        help="put the models before the folder's other models of their task, so they serve it when a "
                             "request names no model (else a new model joins last: requests choose it by name)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.best and args.step is not None:
            raise ExportError("--best and --step each choose the checkpoint; pass one")
        before = {m.name: m for m in existing_manifest(args.out).models}
        entries = export_run(args.run, args.out, args.name, args.opset, args.weights, args.step, args.default,
                             args.best, args.replace,
                             note=lambda line: print(f"dermagan export: note: {line}", file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError) as e:  # ExportError, ManifestError, the loader's errors
        print(f"dermagan export: refused, nothing was written: {e}", file=sys.stderr)
        return 1
    manifest = load_manifest(args.out, verify=False)
    for e in entries:
        serves = manifest.serves_by_default(e.name)
        old = before.get(e.name)  # with --replace: say what went, not "wrote" as if the name were new
        what = f"{e.task}, sha256 {e.sha256[:12]}" + (f"; the one replaced: sha256 {old.sha256[:12]}" if old else "")
        print(f"{'replaced' if old else 'wrote'} {args.out / e.file} ({what}) and its entry in "
              f"{args.out / MANIFEST_NAME}; "
              + (f"it serves {', '.join(serves)} by default" if serves else
                 f"requests choose it by name (model={e.name}): another model of its task comes first "
                 "(--default puts it first)"))
    return 0
