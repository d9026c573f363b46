"""The shipped models/ folder as a user meets it: every file matches its manifest entry, the whole fits the
budget (issue: together <= 60 MB), and each model card describes the very file that ships -- its name,
sha256, task, version, size and headline metrics -- so a card never vouches for another export."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from dermagan.manifest import load_manifest

MODELS = Path(__file__).resolve().parent.parent / "models"
pytestmark = pytest.mark.skipif(not (MODELS / "manifest.json").exists(), reason="no shipped models in this checkout")


def test_every_file_matches_its_entry_and_the_folder_fits_the_budget() -> None:
    manifest = load_manifest(MODELS, verify=True)  # sha256 of every file
    assert {"generate", "add", "remove", "cycle-add", "cycle-remove", "segment"} <= {e.task for e in manifest.models}
    total = sum((MODELS / e.file).stat().st_size for e in manifest.models) + (MODELS / "feature-extractor.onnx").stat().st_size
    assert total <= 60 * 1000 * 1000, f"{total / 1e6:.1f} MB"


@pytest.mark.parametrize("name", [e["name"] for e in json.loads((MODELS / "manifest.json").read_text())["models"]]
                         if (MODELS / "manifest.json").exists() else [])
def test_each_card_describes_the_shipped_file(name: str) -> None:
    entry = next(e for e in load_manifest(MODELS).models if e.name == name)
    card = (MODELS / f"{name}.md").read_text(encoding="utf-8")
    head = re.search(r"File `([^`]+)` \(sha256 `([0-9a-f]{16})…`\), version (\S+), (\d+)x(\d+) px", card)
    assert head, f"{name}.md names no file"
    file, sha, version, h, w = head.groups()
    assert file == entry.file and entry.sha256.startswith(sha), f"{name}.md describes {file} {sha}, not the shipped {entry.sha256[:16]}"
    assert version.rstrip(",") == entry.version and (int(h), int(w)) == tuple(entry.resolution)
    assert f"**Task** `{entry.task}`" in card
    rows = dict(re.findall(r"^\| `([^`]+)` \| ([-0-9.e+]+) ± ", card, flags=re.M))  # the card's all-metrics table
    assert entry.metrics, f"{name}: no headline metrics in the manifest (GET /v1/models shows them)"
    for metric, value in entry.metrics.items():
        assert metric in rows, f"{name}: the manifest's {metric} is not on the card"
        shown = float(rows[metric])
        assert math.isclose(value, shown, rel_tol=5e-3, abs_tol=5e-6), f"{name}: {metric} {value} vs card {shown}"


def test_each_kind_is_served_by_a_generator_whose_card_meets_that_kinds_targets() -> None:
    """`POST /generate` draws a kind from the most specific generator (hands from hand-generate, lesions from
    lesion-generate, eczema from the shared one): that model's card must show all four of the kind's targets
    met on the test split -- a default that misses them should not ship silently."""
    from dermagan.manifest import most_specific

    generators = load_manifest(MODELS).by_task("generate")
    kinds = sorted({k for e in generators for k in e.labels})
    assert kinds == ["eczema", "hand", "lesion"]
    served = {}
    for kind in kinds:
        entry = most_specific(generators, kind)
        card = (MODELS / f"{entry.name}.md").read_text(encoding="utf-8")
        row = rf"^\| [^|]+ \| `{kind}\.[a-z0-9_]+\.[a-z]+` \| [^|]+ \| [^|]+ \| \*\*(\w+)\*\* \|$"  # the targets table
        results = re.findall(row, card, flags=re.M)
        assert results == ["pass"] * 4, f"{kind} from {entry.name}: {results}"
        served[kind] = entry.name
    assert served == {"eczema": "generate", "hand": "hand-generate", "lesion": "lesion-generate"}
