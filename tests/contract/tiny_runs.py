"""Real tiny training runs of every family (tiny preset, toy triplets), exported: shared by the export
tests (tests/training/test_export.py) and the seam test (tests/contract/), which read one folder that
`exported_once` trains and exports once per test session (each did its own, ~30 s apiece)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))  # the trainer's toy data helper
from toy_triplets import run_tiny  # noqa: E402

from dermagan.training.checkpoint import Exportable, load_exportables  # noqa: E402
from dermagan.training.config import tiny  # noqa: E402

#: run folder -> (family, overrides of the tiny preset): every task, and a single-kind generator
RUNS = {
    "generate": ("generate", {}), "add": ("add", {}), "remove": ("remove", {}), "cycle": ("cycle", {}),
    "segment": ("segment", {}), "lesion": ("generate", {"data": replace(tiny("generate").data, kinds=("lesion",))}),
}


def train_and_export(root: Path, export: Callable[[Path], object], runs: tuple[str, ...] = tuple(RUNS),
                     steps: int = 1) -> dict[str, Exportable]:
    """Train each run for `steps` steps under `root`, call `export(run_dir)`; {model name: Exportable}."""
    modules = {}
    for run in runs:
        family, changes = RUNS[run]
        run_tiny(family, root / run, steps=steps, **changes)
        export(root / run)
        modules.update({e.name: e for e in load_exportables(root / run)})
    return modules


_EXPORTED: dict[str, tuple[Path, dict[str, Exportable]]] = {}


def exported_once(tmp_path_factory) -> tuple[Path, dict[str, Exportable]]:
    """Every run of RUNS trained and exported with `dermagan export RUN --out MODELS` into one folder, once
    per test session: (MODELS, {model name: Exportable}). Readers must not write into MODELS."""
    if "all" not in _EXPORTED:
        from dermagan import cli

        root = tmp_path_factory.mktemp("tiny-exports")
        models = root / "models"

        def export(run: Path) -> None:
            assert cli.main(["export", str(run), "--out", str(models)]) == 0

        _EXPORTED["all"] = models, train_and_export(root, export)
    return _EXPORTED["all"]
