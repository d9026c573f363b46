"""Real tiny training runs of every family, exported with `dermagan export` into one models folder."""

from __future__ import annotations

import pytest
from tiny_runs import exported_once


@pytest.fixture(scope="session")
def shipped(tmp_path_factory):
    """(models folder, {model name: Exportable}) -- the PyTorch modules behind every exported file."""
    return exported_once(tmp_path_factory)
