"""The request path both peers share with dermagan: the service's own loader and pre/post-processing.

`load_add_model(models_dir, threads)` opens the manifest's `add` model through
`dermagan.service.engine.Engine` -- the same ONNX Runtime session options as the service
(intra-op threads, inter-op 1, sequential, all graph optimisations, CPU provider) -- so the peers
differ from dermagan only in how requests reach `session.run`, never in the model or its settings.
`plan` / `finish` are `dermagan.service.pipeline.plan_masked_edit` / `finish_masked_edit` with the
service's default settings (decode, crop around the mask, resize, composite, PNG encode).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dermagan.manifest import load_manifest
from dermagan.service import pipeline
from dermagan.service.engine import Engine
from dermagan.service.settings import Settings

DEFAULTS = Settings.from_env({})


def load_add_model(models_dir: Path, threads: int, max_batch: int) -> Engine:
    manifest = load_manifest(models_dir, verify=True)
    entry = next(m for m in manifest.models if m.task == "add")
    engine = Engine(entry, Path(models_dir) / entry.file, providers=("CPUExecutionProvider",),
                    intra_op_threads=threads, buckets=tuple(range(1, max_batch + 1)))
    engine.warm()
    return engine


def plan(engine: Engine, image: bytes, mask: bytes) -> pipeline.MaskedEdit:
    return pipeline.plan_masked_edit(image, mask, engine.hw, max_pixels=DEFAULTS.max_pixels,
                                     dilate_px=DEFAULTS.mask_dilate_px, context=DEFAULTS.mask_context)


def finish(edit: pipeline.MaskedEdit, row: np.ndarray) -> bytes:
    return pipeline.finish_masked_edit(edit, row, dilate_px=DEFAULTS.mask_dilate_px)


def stack(edits: list[pipeline.MaskedEdit]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([e.inputs[k] for e in edits]) for k in edits[0].inputs}


def metrics_text(rows: int, batches: int) -> str:
    """The two dermagan_batch_size lines bench/load.py reads, for a peer."""
    return (f'dermagan_batch_size_sum{{model="peer"}} {float(rows)}\n'
            f'dermagan_batch_size_count{{model="peer"}} {float(batches)}\n')
