"""`dermagan gallery` on the service's fixture models: every grid is written, and each kind's
samples come from the model the service would serve that kind with."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from fixture_models import build_models  # noqa: E402

from dermagan.manifest import load_manifest  # noqa: E402
from dermagan.training import gallery  # noqa: E402
from dermagan.training.evaluate import OnnxModel, from_model  # noqa: E402


def _run(models: Path, out: Path) -> str:
    assert gallery.run(argparse.Namespace(models=models, out=out, n=2, size=32)) == 0
    return (out / "index.md").read_text(encoding="utf-8")


def test_each_kind_is_drawn_by_the_model_serving_it(tmp_path: Path) -> None:
    shared, both = tmp_path / "shared", tmp_path / "both"
    build_models(shared)
    build_models(both, hand_generator=True)
    page = _run(shared, tmp_path / "g1")
    assert {f"## fixture-generate: {k}" for k in ("eczema", "hand", "lesion")} <= set(page.splitlines())
    for name in ("add", "remove", "cycle", "segment"):
        assert f"({name}.png)" in page
    page2 = _run(both, tmp_path / "g2")
    assert "## fixture-hand-generate: hand" in page2 and "## fixture-generate: hand" not in page2
    for kind in ("eczema", "lesion"):  # the shared model's kinds are unchanged by the second model
        assert (tmp_path / "g1" / f"generate-{kind}.png").read_bytes() == (tmp_path / "g2" / f"generate-{kind}.png").read_bytes()

    # the hand grid is the one-kind model's output for the gallery's first block of noise
    entry = load_manifest(both).get("fixture-hand-generate")
    z = np.random.default_rng(gallery.GALLERY_SEED_BASE).standard_normal((4, entry.z_dim or 1)).astype(np.float32)
    want = from_model(OnnxModel(both, entry)(z=z, label=np.zeros(4, np.int64)))
    sheet = np.asarray(Image.open(tmp_path / "g2" / "generate-hand.png").convert("RGB"))
    top, pad, s = 14, 2, want.shape[1]
    assert np.array_equal(sheet[top + pad: top + pad + s, pad: pad + s], want[0])


def test_each_model_of_a_task_gets_its_own_grid(tmp_path: Path) -> None:
    models = tmp_path / "models"
    build_models(models, copies={"my-add": "fixture-add", "my-segment": "fixture-segment"})
    page = _run(models, tmp_path / "g")
    assert "# Gallery of the models in " in page  # not "the shipped models": another folder
    for first, other, name in (("add", "add-my-add", "my-add"), ("segment", "segment-my-segment", "my-segment")):
        assert f"({first}.png)" in page and f"({other}.png)" in page
        assert (tmp_path / "g" / f"{first}.png").is_file() and (tmp_path / "g" / f"{other}.png").is_file()
        section = page.split(f"## {name}: ", 1)[1].split("##", 1)[0]
        assert f"({other}.png)" in section  # the grid under a model's heading is that model's


def test_options_the_models_cannot_take_are_named_before_any_work(tmp_path: Path, capsys) -> None:
    models = tmp_path / "models"
    build_models(models)
    cases = [(dict(models=tmp_path / "nope"), "manifest"), (dict(n=0), "--n must be at least 1, got 0"),
             (dict(size=30), "--size 30: fixture-add takes multiples of 4 px")]
    for kw, words in cases:
        args = argparse.Namespace(**{**dict(models=models, out=tmp_path / "g", n=2, size=32), **kw})
        assert gallery.run(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("dermagan gallery: ") and words in err and "Traceback" not in err, err
        assert not (tmp_path / "g").exists()
