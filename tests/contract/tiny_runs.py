"""Real tiny training runs of every family (tiny preset, toy triplets), exported: shared by the export
tests (tests/training/test_export.py) and the seam test (tests/contract/), which read one folder that
`exported_once` trains and exports once per test session (each did its own, ~30 s apiece) -- once for all
the session's pytest-xdist workers too."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))  # the trainer's toy data helper
from toy_triplets import run_tiny  # noqa: E402

from dermagan.manifest import manifest_lock  # noqa: E402
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
    per test session: (MODELS, {model name: Exportable}). Readers must not write into MODELS.

    Under pytest-xdist the workers share the session's base folder: the first to get here trains and
    exports under an flock while the others wait, then read what it wrote."""
    if "all" not in _EXPORTED:
        from dermagan import cli

        base = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            base = base.parent  # the folder above every worker's own (pytest-of-USER/pytest-N)
        root = base / "tiny-exports"
        models = root / "models"
        with manifest_lock(base):  # the folder flock of `dermagan export`, on a folder nobody deletes meanwhile
            if (root / "done").is_file():
                modules = {e.name: e for run in RUNS for e in load_exportables(root / run)}
            else:
                shutil.rmtree(root, ignore_errors=True)  # a worker that failed halfway

                def export(run: Path) -> None:
                    assert cli.main(["export", str(run), "--out", str(models)]) == 0

                modules = train_and_export(root, export)
                (root / "done").touch()
        _EXPORTED["all"] = models, modules
    return _EXPORTED["all"]
