"""The model contract: `models/manifest.json`, the one seam between training/ and service/.

`training/` writes the ONNX files and this manifest (`dermagan export`); `service/` reads them.
Both sides import this module and nothing else of each other, so the schema is single-sourced.
It needs only pydantic (no torch, no onnxruntime).

Tensor conventions (every task):
- images are float32 [N, 3, H, W], RGB, in [-1, 1] (uint8 / 127.5 - 1);
- masks are float32 [N, 1, H, W] in {0, 1} (1 = eczema / where to edit);
- the batch axis N is dynamic in every file; H and W are dynamic where the network allows
  (then any multiple of `size_multiple` works), else fixed at `resolution`.

Input and output names per task (the ONNX graph uses exactly these names):

| task          | inputs                                        | outputs               |
|---------------|-----------------------------------------------|-----------------------|
| generate      | z float32 [N, z_dim]; label int64 [N] (only if len(labels) > 1) | image |
| add, remove   | image, mask                                   | image                 |
| cycle-add     | image                                         | image                 |
| cycle-remove  | image                                         | image                 |
| segment       | image                                         | mask_logits [N,1,H,W] |

ONNX forbids a graph output that shares an input's name, so in the graph an output named like an
input gets the suffix "_out" (add/remove/cycle-*: output "image" is "image_out" in the graph);
`graph_output_names(task)` is that rule, used by the exporter and the service alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1

Task = Literal["generate", "add", "remove", "cycle-add", "cycle-remove", "segment"]
TASKS: tuple[str, ...] = ("generate", "add", "remove", "cycle-add", "cycle-remove", "segment")
#: The procedural renderer's kinds: what the shipped generators draw. A generator trained on one's own
#: images (`dermagan train generate --data`) draws its class names instead (see LABEL_PATTERN).
KINDS: tuple[str, ...] = ("eczema", "hand", "lesion")

#: The input names each task's ONNX graph must have (generate may also have "label").
TASK_INPUTS: dict[str, tuple[str, ...]] = {
    "generate": ("z",),
    "add": ("image", "mask"),
    "remove": ("image", "mask"),
    "cycle-add": ("image",),
    "cycle-remove": ("image",),
    "segment": ("image",),
}
TASK_OUTPUTS: dict[str, tuple[str, ...]] = {
    "generate": ("image",),
    "add": ("image",),
    "remove": ("image",),
    "cycle-add": ("image",),
    "cycle-remove": ("image",),
    "segment": ("mask_logits",),
}



def graph_output_names(task: str) -> tuple[str, ...]:
    """The output names inside the ONNX graph of `task` (see the module docstring)."""
    inputs = set(TASK_INPUTS[task]) | ({"label"} if task == "generate" else set())
    return tuple(f"{n}_out" if n in inputs else n for n in TASK_OUTPUTS[task])


#: what a generator's label (a kind it draws: a renderer kind or a class name of one's own data, e.g. "MEL",
#: "akiec", "atopic dermatitis") may be: ASCII letters, digits, " ", ".", "_", "-", starting with a letter or
#: digit and not ending with " " or "."; at most LABEL_MAX_LEN characters. Safe as a JSON string, a folder and
#: a file name (`dermagan sample` writes OUT/KIND/KIND_SEED.png).
LABEL_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9 ._-]*[A-Za-z0-9_-])?$"
LABEL_MAX_LEN = 64
#: LABEL_PATTERN and LABEL_MAX_LEN in words, for the messages that refuse a name
LABEL_RULE = (f"ASCII letters, digits, spaces, '.', '_' and '-', starting with a letter or digit, not ending with a "
              f"space or '.', at most {LABEL_MAX_LEN} characters")


def check_labels(labels: list[str] | tuple[str, ...]) -> None:
    """Raise ValueError unless `labels` (a generator's, index = label id) are usable names: non-empty,
    each matching LABEL_PATTERN, unique even ignoring case (two folders that differ only in case are one
    folder on some file systems). `dermagan export` checks it before any export work; the trainer can call it
    to refuse such names before training starts (training/sources.py's generator_folder)."""
    if not labels:
        raise ValueError(f"a generate model needs labels (the kinds it draws), e.g. {list(KINDS)}")
    bad = [k for k in labels if not isinstance(k, str) or len(k) > LABEL_MAX_LEN or not re.fullmatch(LABEL_PATTERN, k)]
    if bad:
        raise ValueError(f"label(s) {bad} are not usable kind names: a label is {LABEL_RULE} (the labels are the "
                         "class folders' names, the labels CSV's classes or the flat folder's name: rename those)")
    folded = [k.casefold() for k in labels]
    dupes = sorted({k for k in labels if folded.count(k.casefold()) > 1})
    if dupes:
        raise ValueError(f"labels {dupes} repeat a name (ignoring case); each kind a generator draws needs its own name")


#: Prefix of the keys written into each ONNX file's metadata_props.
METADATA_PREFIX = "dermagan."


class ManifestError(ValueError):
    """The manifest or a file it names is missing, malformed or does not match."""


class TensorSpec(BaseModel):
    """One named input or output of an ONNX graph."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["float32", "float16", "int64"]
    shape: list[int | str]  # symbolic axes are strings, e.g. ["N", 3, "H", "W"]
    range: str = ""  # human-readable value range, e.g. "[-1, 1]" or "{0, 1}"


#: what a model name may be: lower-case letters, digits, ".", "_", "-", starting with a letter or digit
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


class ModelEntry(BaseModel):
    """One model in `models/manifest.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    task: Task
    version: str
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    resolution: tuple[int, int]  # (H, W) the model was trained at
    size_multiple: int = 1  # H and W must be multiples of this where the graph is dynamic
    dynamic_hw: bool = False  # True when H and W may differ from `resolution`
    z_dim: int | None = None  # generate only
    labels: list[str] = Field(default_factory=list)  # generate: the kinds it draws, index = label id (check_labels)
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    opset: int = 17
    trained_on: str = ""
    recipe: str = ""  # the command that retrains it
    metrics: dict[str, float] = Field(default_factory=dict)
    created: str = ""  # ISO 8601
    dermagan_version: str = ""

    @field_validator("file")
    @classmethod
    def _plain_file_name(cls, v: str) -> str:
        if "/" in v or "\\" in v or v in ("", ".", ".."):
            raise ValueError(f"file must be a plain file name inside the models folder, got {v!r}")
        return v

    @model_validator(mode="after")
    def _task_contract(self) -> "ModelEntry":
        need = set(TASK_INPUTS[self.task])
        missing = need - set(self.inputs)
        if missing:
            raise ValueError(f"task {self.task!r} needs inputs {sorted(need)}, missing {sorted(missing)}")
        outs = set(TASK_OUTPUTS[self.task]) - set(self.outputs)
        if outs:
            raise ValueError(f"task {self.task!r} needs outputs {sorted(TASK_OUTPUTS[self.task])}, missing {sorted(outs)}")
        if self.task == "generate":
            if not self.z_dim or self.z_dim < 1:
                raise ValueError("a generate model needs z_dim >= 1")
            check_labels(self.labels)
            if len(self.labels) > 1 and "label" not in self.inputs:
                raise ValueError("a generate model with several labels needs a 'label' input")
        h, w = self.resolution
        if h < 1 or w < 1 or h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"resolution {self.resolution} must be positive multiples of size_multiple={self.size_multiple}")
        return self


class Manifest(BaseModel):
    """The whole `models/manifest.json`."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    models: list[ModelEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> "Manifest":
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {dupes}")
        return self

    def get(self, name: str) -> ModelEntry:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model named {name!r}; the manifest has {[m.name for m in self.models]}")

    def by_task(self, task: str) -> list[ModelEntry]:
        return [m for m in self.models if m.task == task]

    def upsert(self, entry: ModelEntry) -> None:
        """Replace the model of `entry`'s name where it stands, or append `entry`. The order is kept:
        it decides which model serves a task (the first) and breaks ties between generators, so
        re-exporting a model must not change what the service serves."""
        names = [m.name for m in self.models]
        if entry.name in names:
            self.models[names.index(entry.name)] = entry
        else:
            self.models.append(entry)

    def make_default(self, name: str) -> None:
        """Move model `name` before every other model of its task: it then serves the task (a generator:
        its kinds, unless a model with fewer labels draws one of them -- see `most_specific`)."""
        entry = next(m for m in self.models if m.name == name)
        self.models.remove(entry)
        first = next((i for i, m in enumerate(self.models) if m.task == entry.task), len(self.models))
        self.models.insert(first, entry)

    def serves_by_default(self, name: str) -> list[str]:
        """What model `name` serves when a request names no model: [its task], a generator's kinds, or []."""
        entry = next(m for m in self.models if m.name == name)
        if entry.task == "generate":
            return [k for k in entry.labels if most_specific(self.by_task("generate"), k) is entry]
        return [entry.task] if self.by_task(entry.task)[0] is entry else []


def most_specific(entries: list[ModelEntry], kind: str) -> ModelEntry | None:
    """The model that serves `kind`: of `entries` whose labels include it, the one with the fewest
    labels (a one-kind generator before a shared one), the first in the manifest's order on a tie."""
    found = [e for e in entries if kind in e.labels]
    return min(found, key=lambda e: len(e.labels)) if found else None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_manifest(models_dir: Path | str, *, verify: bool = True) -> Manifest:
    """Read and validate `models_dir/manifest.json`.

    With `verify`, every named file must exist and match its sha256; any problem raises
    ManifestError naming the file.
    """
    models_dir = Path(models_dir)
    path = models_dir / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from e
    except ValidationError as e:
        # one line (pydantic's own text is several, with a link), each problem at its place: models.0.task: ...
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'manifest'}: {err['msg']}" for err in e.errors())
        raise ManifestError(f"{path}: does not match the manifest schema: {problems}") from e
    if verify:
        for m in manifest.models:
            f = models_dir / m.file
            if not f.is_file():
                raise ManifestError(f"{f}: model file of {m.name!r} is missing")
            digest = sha256_file(f)
            if digest != m.sha256:
                raise ManifestError(f"{f}: sha256 mismatch for {m.name!r} (manifest {m.sha256[:12]}…, file {digest[:12]}…)")
    return manifest


@contextlib.contextmanager
def manifest_lock(models_dir: Path | str) -> Iterator[None]:
    """Hold an exclusive lock on the models folder for a read-modify-write of its manifest.json, so that
    two writers at once (two `dermagan export` into one folder) each add their entries instead of the
    last one's save dropping the other's. An flock on the folder itself: nothing is left behind in it.
    (A no-op where there is no fcntl.)"""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(models_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def write_synced(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it: once this returns, the bytes are on disk (a rename of `path`
    after a crash then never leaves a file of zeros or a short file in its place)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that the renames in it survive a crash; best effort (some systems cannot)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_manifest(models_dir: Path | str, manifest: Manifest) -> Path:
    """Write the manifest atomically (write and fsync a temporary file, then rename): the folder holds the
    old manifest or the new one, never a part of one. A failed write (a full disk) raises and leaves the
    old manifest and no temporary file."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    try:
        write_synced(tmp, (manifest.model_dump_json(indent=2) + "\n").encode("utf-8"))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(models_dir)
    return path


def metadata_props(entry: ModelEntry) -> dict[str, str]:
    """The facts written into an ONNX file's metadata_props (all but the file's own hash)."""
    facts = entry.model_dump(mode="json", exclude={"sha256", "file"})
    return {METADATA_PREFIX + "manifest": json.dumps(facts, sort_keys=True),
            METADATA_PREFIX + "name": entry.name,
            METADATA_PREFIX + "task": entry.task,
            METADATA_PREFIX + "version": entry.version}
