"""Real tiny training runs of every family, exported with `dermagan export` into one models folder."""

from __future__ import annotations

import pytest
from tiny_runs import train_and_export

from dermagan.training.export import export_run


@pytest.fixture(scope="session")
def shipped(tmp_path_factory):
    """(models folder, {model name: Exportable}) -- the PyTorch modules behind every exported file."""
    root = tmp_path_factory.mktemp("contract")
    models = root / "models"
    # remove is add's network and export path with another name: the export tests cover it
    modules = train_and_export(root, lambda run: export_run(run, models), runs=("generate", "add", "cycle", "segment", "lesion"))
    return models, modules
