"""One ONNX Runtime session per model: load, verify against the manifest, warm, run.

Providers come from settings (CUDA, then CPU). ONNX Runtime falls back to CPU silently, so the
active provider is read back from `session.get_providers()` and reported. Batches are padded up to
the next batch bucket so that only warmed shapes ever run.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
from pathlib import Path

import numpy as np

from dermagan.cpus import usable_cores
from dermagan.manifest import METADATA_PREFIX, TASK_OUTPUTS, ModelEntry, TensorSpec, graph_output_names

log = logging.getLogger("dermagan.service")

Arrays = dict[str, np.ndarray]

_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)"}
_NP_TYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64}


class EngineError(RuntimeError):
    """A model file cannot be served: bad graph, contract mismatch, no usable provider."""


@functools.cache
def preload_cuda_libraries() -> str:
    """Load the CUDA and cuDNN libraries of the nvidia-* wheels (`onnxruntime-gpu[cuda,cudnn]`), once.

    ONNX Runtime's CUDA provider finds them only on the loader's path; a pip install puts them in
    site-packages, where `onnxruntime.preload_dlls()` (ONNX Runtime >= 1.21) looks. Without this, a
    plain `pip install dermagan[serve-gpu]` would run every model on the CPU. What it prints (a library
    it could not load) is logged once and returned, never written to stdout.
    """
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return ""
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        try:
            preload()
        except Exception as e:  # it raises where it finds no package layout it knows; the loader's path may still do
            print(f"onnxruntime.preload_dlls() failed: {e}")
    text = " ".join(said.getvalue().split())
    if text:
        log.warning("loading the CUDA libraries: %s", text)
    return text


def _threads(requested: int) -> int:
    return requested if requested > 0 else usable_cores()


_SKIPPED_SAID: set[str] = set()


def _say_skipped(skipped: list[str], first: str, version: str) -> None:
    """Log once per process each requested provider this ONNX Runtime lacks (the default CUDA,CPU list on the
    CPU package: the models run on the CPU, which the start-up log then says)."""
    for p in skipped:
        if p not in _SKIPPED_SAID:
            _SKIPPED_SAID.add(p)
            log.info("%s is not in this ONNX Runtime (%s); the models run on %s%s", p, version, first,
                     " (CUDA needs onnxruntime-gpu, the serve-gpu extra)" if p == "CUDAExecutionProvider" else "")


class Engine:
    """An ONNX Runtime session for one manifest entry."""

    def __init__(self, entry: ModelEntry, path: Path, *, providers: tuple[str, ...],
                 intra_op_threads: int = 0, buckets: tuple[int, ...] = (1,), spinning: bool = False) -> None:
        import onnxruntime as ort  # here, so that importing the service stays cheap

        self.entry = entry
        self.path = path
        self.buckets = tuple(sorted(buckets))
        available = ort.get_available_providers()
        unknown = [p for p in providers if not p.endswith("ExecutionProvider")]
        if unknown:
            raise EngineError(f"unknown execution providers {unknown}; this ONNX Runtime offers {available}")
        usable = [p for p in providers if p in available]
        if not usable:
            hint = ("; CUDA needs onnxruntime-gpu (the serve-gpu extra, in place of onnxruntime), or ask for "
                    "CPUExecutionProvider instead (DERMAGAN_PROVIDERS, or --providers of edit and sample)"
                    if "CUDAExecutionProvider" in providers else "")
            raise EngineError(f"none of the providers {list(providers)} is available; this ONNX Runtime "
                              f"({ort.__version__}) offers {available}{hint}")
        _say_skipped([p for p in providers if p not in available], usable[0], ort.__version__)
        if "CUDAExecutionProvider" in usable:
            preload_cuda_libraries()
        so = ort.SessionOptions()
        so.intra_op_num_threads = _threads(intra_op_threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # Spinning threads busy-wait between runs: CPU the decode/encode threads then lack.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            self.session = ort.InferenceSession(str(path), so, providers=usable)
        except Exception as e:
            raise EngineError(f"{path}: ONNX Runtime cannot load model {entry.name!r}: {e}") from e
        self.provider = self.session.get_providers()[0]
        if self.provider not in usable:  # e.g. CUDA only, on a machine whose CUDA does not work
            raise EngineError(f"{path}: model {entry.name!r} was to run on {usable}, but ONNX Runtime fell back "
                              f"to {self.provider}; add it to DERMAGAN_PROVIDERS to allow that")
        if self.provider != usable[0]:
            log.warning("model %s: asked for %s, ONNX Runtime runs it on %s", entry.name, usable[0], self.provider)
        #: manifest output name -> graph output name (the rule of dermagan.manifest.graph_output_names)
        self._outputs = dict(zip(TASK_OUTPUTS[entry.task], graph_output_names(entry.task)))
        self._check_contract()
        self._input_types = {i.name: _NP_TYPES[self.entry.inputs[i.name].dtype] for i in self.session.get_inputs()}

    @property
    def hw(self) -> tuple[int, int]:
        """The (H, W) the service feeds this model."""
        return self.entry.resolution[0], self.entry.resolution[1]

    def _check_contract(self) -> None:
        """The graph's inputs/outputs must be the manifest's: names, dtypes, ranks, fixed dims."""
        where = f"{self.path}: model {self.entry.name!r}"
        meta = self.session.get_modelmeta().custom_metadata_map
        name = meta.get(METADATA_PREFIX + "name")
        if name is not None and name != self.entry.name:
            raise EngineError(f"{where}: the file's metadata names model {name!r}")
        if METADATA_PREFIX + "manifest" in meta:
            try:
                facts = json.loads(meta[METADATA_PREFIX + "manifest"])
            except json.JSONDecodeError as e:
                raise EngineError(f"{where}: metadata {METADATA_PREFIX}manifest is not JSON") from e
            if facts.get("task") not in (None, self.entry.task):
                raise EngineError(f"{where}: the file's metadata says task {facts.get('task')!r}, the manifest {self.entry.task!r}")
        for kind, actual, expected in (("input", self.session.get_inputs(), self.entry.inputs),
                                       ("output", self.session.get_outputs(), self.entry.outputs)):
            by_name = {a.name: a for a in actual}
            if kind == "input" and set(by_name) != set(expected):
                raise EngineError(f"{where}: graph inputs {sorted(by_name)} != manifest inputs {sorted(expected)}")
            for name, spec in expected.items():
                graph_name = name if kind == "input" else self._outputs.get(name, name)
                if graph_name not in by_name:
                    raise EngineError(f"{where}: the graph has no {kind} {name!r} (graph {kind}s: {sorted(by_name)})")
                a = by_name[graph_name]
                self._check_tensor(where, kind, name, a.type, list(a.shape), spec)

    def _check_tensor(self, where: str, kind: str, name: str, ort_type: str, shape: list[object], spec: TensorSpec) -> None:
        if ort_type != _ORT_TYPES[spec.dtype]:
            raise EngineError(f"{where}: {kind} {name!r} is {ort_type}, the manifest says {spec.dtype}")
        if len(shape) != len(spec.shape):
            raise EngineError(f"{where}: {kind} {name!r} has shape {shape}, the manifest says {spec.shape}")
        if isinstance(shape[0], int):
            raise EngineError(f"{where}: {kind} {name!r} has a fixed batch axis {shape[0]}; it must be dynamic")
        for got, want in zip(shape[1:], spec.shape[1:]):
            if isinstance(got, int) and isinstance(want, int) and got != want:
                raise EngineError(f"{where}: {kind} {name!r} has shape {shape}, the manifest says {spec.shape}")

    def example_inputs(self, n: int) -> Arrays:
        """Zeros of every input at batch `n` and the served resolution (for warm-up and benchmarks)."""
        h, w = self.hw
        feeds: Arrays = {}
        for name, spec in self.entry.inputs.items():
            dims = [n]
            for d in spec.shape[1:]:
                if isinstance(d, int):
                    dims.append(d)
                elif d in ("H", "h", "height"):
                    dims.append(h)
                elif d in ("W", "w", "width"):
                    dims.append(w)
                elif d in ("Z", "z_dim", "z") and self.entry.z_dim:
                    dims.append(self.entry.z_dim)
                else:
                    raise EngineError(f"model {self.entry.name!r}: cannot size axis {d!r} of input {name!r}")
            feeds[name] = np.zeros(dims, dtype=_NP_TYPES[spec.dtype])
        return feeds

    def bucket(self, rows: int) -> int:
        for b in self.buckets:
            if b >= rows:
                return b
        return rows  # larger than every bucket: the batcher never sends this

    def run(self, feeds: Arrays) -> Arrays:
        """Run a batch (padded with zeros up to its bucket); outputs are float32, rows = input rows."""
        rows = next(iter(feeds.values())).shape[0]
        size = self.bucket(rows)
        prepared = {}
        for name, x in feeds.items():
            x = x.astype(self._input_types[name], copy=False)
            if size > rows:
                x = np.concatenate([x, np.zeros((size - rows, *x.shape[1:]), x.dtype)])
            prepared[name] = x
        outs = self.session.run(list(self._outputs.values()), prepared)
        return {name: np.asarray(o[:rows], dtype=np.float32) for name, o in zip(self._outputs, outs)}

    def warm(self) -> None:
        """Run every bucket once (the first run of a shape is several times slower)."""
        for b in self.buckets:
            self.run(self.example_inputs(b))
