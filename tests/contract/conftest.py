"""Real tiny training runs of every family, exported with `dermagan export` into one models folder."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))  # the trainer's toy data helper
from toy_triplets import run_tiny  # noqa: E402

from dermagan.training.checkpoint import load_exportables  # noqa: E402
from dermagan.training.config import tiny  # noqa: E402
from dermagan.training.export import export_run  # noqa: E402

#: run name -> (family, overrides of the tiny preset)
RUNS = {
    "generate": ("generate", {}),
    "add": ("add", {}),
    "cycle": ("cycle", {}),
    "segment": ("segment", {}),
    "lesion": ("generate", {"data": replace(tiny("generate").data, kinds=("lesion",))}),
}


@pytest.fixture(scope="session")
def shipped(tmp_path_factory):
    """(models folder, {model name: Exportable}) -- the PyTorch modules behind every exported file."""
    root = tmp_path_factory.mktemp("contract")
    models = root / "models"
    modules = {}
    for run, (family, changes) in RUNS.items():
        run_dir = root / run
        run_tiny(family, run_dir, steps=2, **changes)
        entries = export_run(run_dir, models)
        for entry, exportable in zip(entries, load_exportables(run_dir)):
            modules[entry.name] = exportable
    return models, modules
